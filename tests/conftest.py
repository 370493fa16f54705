"""Shared fixtures. VM runs are session-scoped: one boot per kernel serves every check."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer import vm
from tracer.record import Trace, read_trace
from tracer.storms import Scenario
from tracer.witness import WitnessEvent, parse


@dataclass
class VMRun:
    kernel: vm.KernelImage
    out: Path
    trace: Trace
    witness: list[WitnessEvent]
    manifest: dict[str, object]

    def scenario(self, name: str) -> Scenario:
        for d in self.manifest["scenarios"]:  # type: ignore[attr-defined]
            if d["name"] == name:
                return Scenario(**d)
        raise KeyError(name)


def _boot(spec: str, tmp_path_factory: pytest.TempPathFactory) -> VMRun:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (apt, QEMU, module loading inside the guest)")
    progress = lambda m: print(f"[vm {spec}] {m}", flush=True)  # noqa: E731
    kern = vm.resolve_kernel(spec, progress)
    out = tmp_path_factory.mktemp(f"vm-{spec}")
    rc = vm.run_guest(kern, out, [], progress, timeout=1500)
    assert rc == 0, f"guest failed with {rc}: {(out / 'tracer.log').read_text()[-2000:]}"
    return VMRun(
        kernel=kern,
        out=out,
        trace=read_trace(str(out / "trace.jsonl")),
        witness=parse((out / "witness.txt").read_text()),
        manifest=json.loads((out / "manifest.json").read_text()),
    )


@pytest.fixture(scope="session", params=["stable", "backports"])
def vm_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VMRun:
    return _boot(request.param, tmp_path_factory)
