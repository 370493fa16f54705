"""Guest side of the preemption storm (tests/test_vm_preempt.py): concurrent loads of one
file, traced twice at once, until the hooks from before the fix lose something.

Run as `kmodtrace vm`'s command (kmodlab/guest.py --command), beside its witness and its
`live` recording (trace.jsonl, this kernel's default hooks). It adds a recording with
the module syscalls' BPF trampolines kept (KMODTRACE_TRAMPOLINES=1: the hooks before
the fix, tramp.jsonl), then runs rounds of C (24) concurrent `insmod` of one
uncompressed module whose init fails (acpi-cpufreq: -ENODEV under QEMU, converged by
idempotent() onto one winner) and C of one that loads (dummy, removed after each round),
until the trampoline recording is short of a return or an entry, or MAX_ROUNDS (16-wide
rounds lost 2 returns in 320 calls once, 18 in another boot: losses are rare, so up to
20 rounds, about 9 s each under emulation). The modules are
the kernel's own .ko.xz, decompressed: no kernel headers or kbuild needed. Writes
preempt.json: the rounds, the calls made, and the storm's CLOCK_MONOTONIC window.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from kmodlab.guest import progress, start_tracer
from tracer.events import Kind

FAIL_MODULE = "kernel/drivers/cpufreq/acpi-cpufreq.ko.xz"
OK_MODULE = "kernel/drivers/net/dummy.ko.xz"
MIN_ROUNDS, MAX_ROUNDS = 2, 20


def _decompress(rel: str, dest: Path) -> Path:
    src = Path(f"/lib/modules/{platform.release()}") / rel
    dest.write_bytes(lzma.decompress(src.read_bytes()))
    return dest


def _insmod_all(path: Path, count: int) -> None:
    procs = [subprocess.Popen(["insmod", str(path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(count)]
    for p in procs:
        p.wait()


def _count(trace: Path, kind: Kind) -> int:
    """Events of KIND the recorder has written so far (it writes every 100 ms)."""
    tag = f'"kind":{int(kind)},'
    with open(trace) as f:
        return sum(1 for line in f if tag in line)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=0,
                    help="run exactly this many rounds (a measurement), loss or not")
    args = ap.parse_args()
    out: Path = args.out
    work = Path("/tmp/kmt-preempt")
    work.mkdir(exist_ok=True)
    fail = _decompress(FAIL_MODULE, work / "fail.ko")
    ok = _decompress(OK_MODULE, work / "ok.ko")
    tramp_trace = out / "tramp.jsonl"
    tracer = start_tracer(out, ["record", "-o", str(tramp_trace)], "tramp",
                          env={"KMODTRACE_TRAMPOLINES": "1"})
    base_enter = _count(tramp_trace, Kind.FINIT_ENTER)
    base_exit = _count(tramp_trace, Kind.FINIT_EXIT)
    calls = rounds = 0
    start_ns = time.monotonic_ns()
    while rounds < (args.rounds or MAX_ROUNDS):
        _insmod_all(fail, args.concurrency)
        _insmod_all(ok, args.concurrency)
        subprocess.run(["rmmod", "dummy"], check=False)
        calls += 2 * args.concurrency
        rounds += 1
        time.sleep(0.3)  # the recorder's next write
        short = (calls - (_count(tramp_trace, Kind.FINIT_EXIT) - base_exit),
                 calls - (_count(tramp_trace, Kind.FINIT_ENTER) - base_enter))
        progress(f"round {rounds}: {calls} calls, trampolines short of "
                 f"{short[0]} returns, {short[1]} entries")
        if not args.rounds and rounds >= MIN_ROUNDS and any(short):
            break
    end_ns = time.monotonic_ns()
    # the probes made through tracefs, whose nmissed kprobe_profile shows (both recorders')
    events = Path("/sys/kernel/tracing/kprobe_events")
    kprobes = events.read_text().splitlines() if events.exists() else []
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=120)
    (out / "preempt.json").write_text(json.dumps({
        "rounds": rounds, "concurrency": args.concurrency, "calls": calls,
        "start_ns": start_ns, "end_ns": end_ns, "tramp_rc": tracer.returncode,
        "kprobe_events": kprobes,
        "preempt": Path("/sys/kernel/debug/sched/preempt").read_text().strip()
        if os.path.exists("/sys/kernel/debug/sched/preempt") else None}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
