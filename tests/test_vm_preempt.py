"""Nothing lost in silence on a preemptible kernel: Debian's 7.x (PREEMPT_DYNAMIC, lazy).

One boot (kmodlab/preempt.py): concurrent insmod storms of one file, some failing
(converged onto a failing winner), some loading, traced at once by this kernel's default
hooks (the module syscalls by kprobe/kretprobe: tracer/kernel.py preemption) and by the
hooks from before the fix (KMODTRACE_TRAMPOLINES=1: fentry/fexit, which the kernel skips
for a task while another is preempted inside them), repeated until the latter loses.
Both are checked against the kernel's own tracefs witness.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmodlab import vm
from kmodlab.witness import WitnessEvent, parse
from tracer import reportdata
from tracer.events import Kind
from tracer.record import Trace, read_trace

pytestmark = pytest.mark.vm

KERNEL = "trixie-backports"
FINIT = "__x64_sys_finit_module"


@dataclass
class PreemptRun:
    out: Path
    default: Trace  # the kernel's default hooks (the live recording)
    tramp: Trace  # fentry/fexit kept (KMODTRACE_TRAMPOLINES=1)
    witness: list[WitnessEvent]
    storm: dict[str, Any]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> PreemptRun:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (apt, QEMU, module loading inside the guest)")
    progress = lambda m: print(f"[vm {KERNEL}] {m}", flush=True)  # noqa: E731
    kern = vm.resolve_kernel(KERNEL, progress)
    out = tmp_path_factory.mktemp("vm-preempt")
    command = f"{sys.executable} -m kmodlab.preempt --out {out}"
    rc = vm.run_guest(kern, out, ["--command", command], progress, timeout=1200)
    logs = "".join(p.read_text()[-2000:] for p in out.glob("*.log"))
    assert rc == 0, f"guest failed with {rc}: {logs}"
    return PreemptRun(out, read_trace(str(out / "trace.jsonl")),
                      read_trace(str(out / "tramp.jsonl")),
                      parse((out / "witness.txt").read_text()),
                      json.loads((out / "preempt.json").read_text()))


def _window(tr: Trace) -> tuple[int, int]:
    assert tr.trailer is not None, "recording ended without a trailer"
    return int(tr.header["start_mono_ns"]), int(tr.trailer["end_mono_ns"])


def _witnessed(run: PreemptRun, tr: Trace, event: str) -> list[WitnessEvent]:
    lo, hi = _window(tr)
    return [w for w in run.witness if w.event == event and lo <= w.ts_ns <= hi]


def _deficits(run: PreemptRun, tr: Trace) -> tuple[int, int]:
    """(entries, returns) of finit_module the witness saw in TR's life and TR did not."""
    kinds = Counter(e.kind for e in tr.events)
    return (len(_witnessed(run, tr, "sys_enter_finit_module")) - kinds[Kind.FINIT_ENTER],
            len(_witnessed(run, tr, "sys_exit_finit_module")) - kinds[Kind.FINIT_EXIT])


def test_the_storm_ran_and_the_kernel_preempts(run: PreemptRun) -> None:
    assert run.storm["tramp_rc"] == 0
    lo, hi = run.storm["start_ns"], run.storm["end_ns"]
    calls = [w for w in run.witness if w.event == "sys_exit_finit_module" and lo <= w.ts_ns <= hi]
    assert len(calls) == run.storm["calls"]
    rets = Counter(w.ret for w in calls)
    assert rets[0] > 0 and rets[-19] > 0, rets  # loads that succeeded, and -ENODEV
    assert "preemption: lazy" in (run.out / "live.log").read_text()


def test_default_hooks_see_every_call_and_return(run: PreemptRun) -> None:
    """kprobe/kretprobe on the wrapper: every finit_module entry and return the witness
    saw, with its return value, and no miss on those hooks."""
    tr = run.default
    hooks = tr.header["hooks"]
    assert f"kprobe:{FINIT}" in hooks and f"kretprobe:{FINIT}" in hooks
    assert not [h for h in hooks if "func:" in h and "finit_module" in h], hooks
    assert _deficits(run, tr) == (0, 0)
    lo, hi = _window(tr)
    ours = Counter(e.ret for e in tr.events if e.kind == Kind.FINIT_EXIT and lo <= e.ts_ns <= hi)
    assert ours == Counter(w.ret for w in _witnessed(run, tr, "sys_exit_finit_module"))
    assert tr.trailer is not None and tr.trailer["lost"] == 0
    assert not [h for h in tr.trailer["misses"] if "finit_module" in h], tr.trailer["misses"]
    # both made through tracefs, where kprobe_profile counts their nmissed
    probes = " ".join(run.storm["kprobe_events"])
    assert f"kprobes/p_{FINIT}_bcc_" in probes and f"kprobes/r_{FINIT}_bcc_" in probes, probes


def test_the_report_counts_every_attempt_as_the_kernel_returned_it(run: PreemptRun) -> None:
    """idempotent() (7.3 has it) hands each waiter its winner's -ENODEV: the report counts
    every one as an ENODEV failure, the converged among them marked, as the witness saw."""
    tr = run.default
    rets = Counter(w.ret for w in _witnessed(run, tr, "sys_exit_finit_module"))
    rows = reportdata.read(str(run.out / "trace.jsonl")).by_module.values()
    assert sum(r.failures.get("ENODEV", 0) for r in rows) == rets[-19] > 0
    assert sum(r.converged_failures.get("ENODEV", 0) for r in rows) > 0


def test_trampoline_misses_equal_the_witness_deficit(run: PreemptRun) -> None:
    """The hooks from before the fix lose entries and returns under this contention, and
    the trailer reports exactly what the witness says they lost, per hook."""
    tr = run.tramp
    assert f"kretfunc:{FINIT}" in tr.header["hooks"]
    entries, returns = _deficits(run, tr)
    assert entries + returns > 0, f"no loss in {run.storm['rounds']} rounds"
    assert tr.trailer is not None and tr.trailer["lost"] == 0
    misses = tr.trailer["misses"]
    assert (misses.get(f"kfunc:{FINIT}", 0), misses.get(f"kretfunc:{FINIT}", 0)) == \
        (entries, returns)
    assert tr.trailer["missed"] >= entries + returns


def test_the_model_takes_7_3s_dups_form_by_release(run: PreemptRun) -> None:
    """Debian's 7.3 has no dups.c built in: its release gives the refcount form, and every
    view says so (tracer/kernel.py dups_form)."""
    features = run.default.header["features"]
    assert (features["dups"], features["announce"], features["announce_source"]) == (
        False, "first", "release")
    text = reportdata.read(str(run.out / "trace.jsonl")).features.profile
    assert (text.announce, text.announce_source) == ("first", "release")
