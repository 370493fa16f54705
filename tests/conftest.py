"""Shared fixtures. VM runs are session-scoped: one boot per kernel serves every check."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmodlab import vm
from kmodlab.storms import Scenario
from kmodlab.witness import WitnessEvent, parse
from tracer.record import Trace, read_trace


@dataclass
class VMRun:
    kernel: vm.KernelImage
    out: Path
    trace: Trace
    witness: list[WitnessEvent]
    manifest: dict[str, Any]
    live: list[dict[str, Any]]  # the stories `kmodtrace live --json` printed in the guest

    def scenario(self, name: str) -> Scenario:
        for d in self.manifest["scenarios"]:
            if d["name"] == name:
                return Scenario(**d)
        raise KeyError(name)


def _boot(spec: str, tmp_path_factory: pytest.TempPathFactory) -> VMRun:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (apt, QEMU, module loading inside the guest)")
    progress = lambda m: print(f"[vm {spec}] {m}", flush=True)  # noqa: E731
    kern = vm.resolve_kernel(spec, progress)
    out = tmp_path_factory.mktemp(f"vm-{spec}")
    # Headers hidden: every check of test_vm.py also proves the BTF build (test_headerless.py)
    rc = vm.run_guest(kern, out, ["--hide-headers"], progress, timeout=1500)
    logs = "".join(p.read_text()[-2000:] for p in out.glob("*.log"))
    assert rc == 0, f"guest failed with {rc}: {logs}"
    return VMRun(
        kernel=kern,
        out=out,
        trace=read_trace(str(out / "trace.jsonl")),
        witness=parse((out / "witness.txt").read_text()),
        manifest=json.loads((out / "manifest.json").read_text()),
        live=[json.loads(line) for line in (out / "live.out").read_text().splitlines()],
    )


@pytest.fixture(scope="session", params=["stable", "backports"])
def vm_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VMRun:
    return _boot(request.param, tmp_path_factory)
