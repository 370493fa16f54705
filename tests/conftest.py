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


@pytest.fixture(autouse=True)
def _documents_match_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `report --json`, `boot diff --json` document and `live --json` story a test
    makes in this process is validated against tracer/report.schema.json as it is made."""
    from tests import schema_check

    schema_check.hook(monkeypatch)


# ---- what the run stands on, and what each phase took --------------------------------------

# Debian's packages cannot be pinned (the archive drops old versions): their versions head
# the output, so that a change between two runs is visible.
DEBIAN_PACKAGES = ("python3-bpfcc", "qemu-system-x86", "linux-image-amd64")


def _debian_versions() -> list[str]:
    import subprocess

    try:
        p = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
                            *DEBIAN_PACKAGES], capture_output=True, text=True, check=False)
    except OSError as e:
        return [f"dpkg-query: {e}"]
    return p.stdout.split("\n")[:-1] or [p.stderr.strip()]


def pytest_report_header(config: pytest.Config) -> list[str]:
    import hashlib
    from importlib import metadata

    lock = Path(__file__).resolve().parent.parent / "requirements.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12] if lock.exists() else "none"
    tools = ", ".join(f"{d} {metadata.version(d)}" for d in
                      ("virtme-ng", "mypy", "ruff", "pytest", "hypothesis"))
    return [f"debian: {'; '.join(_debian_versions())}; kernel {os.uname().release}",
            f"pypi (requirements.lock {digest}): {tools}"]


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each test file's time (setup, VM boots and teardown included): the README's budgets
    are per group of these files."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("phase times")
    for path, s in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"[phase] {path}: {s:.0f}s")
    terminalreporter.write_line(f"[phase] pytest total: {sum(_FILE_SECONDS.values()):.0f}s")
