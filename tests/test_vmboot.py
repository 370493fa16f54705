"""`kmodtrace vm --boot`: the trace of a real boot holds udev's coldplug loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmodlab import vm, vmboot
from tracer.kernel import Features
from tracer.record import Trace, read_trace
from tracer.session import replay
from tracer.stories import module_from_path

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def boot_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trace]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    progress = lambda m: print(f"[vm --boot] {m}", flush=True)  # noqa: E731
    kern = vm.resolve_kernel("stable", progress)
    out = tmp_path_factory.mktemp("vmboot")
    rc = vmboot.run_boot(kern, out, progress)
    logs = "".join(p.read_text()[-2000:] for p in out.glob("*.log"))
    assert rc == 0, f"boot guest failed with {rc}: {logs}"
    return out, read_trace(str(out / "boot.jsonl"))


def test_boot_trace_is_complete(boot_trace: tuple[Path, Trace]) -> None:
    _, trace = boot_trace
    assert trace.trailer is not None
    assert trace.trailer["lost"] == 0 and trace.trailer["missed"] == 0
    assert trace.trailer["stop_reason"] in ("settled", "max-duration")


def test_coldplug_loads_come_from_udev_with_no_request(boot_trace: tuple[Path, Trace]) -> None:
    _, trace = boot_trace
    rep = replay(trace.events, Features.from_dict(trace.header["features"]).profile)
    udev = [(ld, v) for ld, v in rep.loads if "udev" in ld.comm]
    assert udev, f"no udev loads among {[ld.comm for ld, _ in rep.loads]}"
    for ld, v in udev:
        assert ld.request_id is None  # udev's builtin kmod calls finit_module itself
        assert ld.syscall == "finit_module" and module_from_path(ld.file) == ld.module
        assert v is not None and ld.ret is not None
    assert any(ld.loaded for ld, _ in udev)


def test_tracer_was_ready_before_udev_started(boot_trace: tuple[Path, Trace]) -> None:
    out, trace = boot_trace
    attach_s = float((out / "boot.ready").read_text())
    assert attach_s > 0
    first_udev = min(e.ts_ns for e in trace.events if "udev" in e.comm)
    assert trace.header["start_mono_ns"] < first_udev
