"""The in-VM half of `kmodtrace bench`: attach time, overhead, loss, memory.

Writes bench.json into OUT. Every figure is measured side by side in this one
boot, because emulated machines are too noisy to compare across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kmodlab import guest, storms
from kmodlab.guest import link_kernel_tree, progress
from kmodlab.witness import Witness, parse
from tracer import kernel
from tracer.record import read_trace


def attach_execsnoop(timeout: float = 600) -> float:
    """Seconds from start until bcc's execsnoop prints its header (it does after attach)."""
    t0 = time.monotonic()
    # execsnoop is Python too: unbuffered, or its header sits in a pipe buffer
    p = subprocess.Popen(["execsnoop-bpfcc"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.stdout is not None
    p.stdout.readline()
    dt = time.monotonic() - t0
    p.send_signal(signal.SIGINT)
    p.wait(timeout=timeout)
    return dt


def start_tracer(out: Path, name: str) -> tuple[subprocess.Popen[bytes], float]:
    """A recorder into OUT/NAME.jsonl and the seconds it took to attach."""
    t0 = time.monotonic()
    proc = guest.start_tracer(out, ["record", "-o", str(out / f"{name}.jsonl")], name)
    return proc, time.monotonic() - t0


def stop_tracer(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    p.wait(timeout=300)


def rss_kib(pid: int, field: str = "RssAnon") -> int:
    """Anonymous RSS: the tracer's own heap. VmRSS also counts the BPF ring buffer's
    pages (mapped twice, 2 x 64 MiB), which become resident as a storm writes them."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def timed_storm(sc: storms.Scenario, ko: Path) -> float:
    t0 = time.monotonic()
    storms.run(sc, ko)
    return time.monotonic() - t0 - (1.5 if sc.generator == "kthread" else 0.5)  # run()'s sleeps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--kernel-root", type=Path)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--modprobes", type=int, default=1000)
    ap.add_argument("--overhead-count", type=int, default=1000)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.kernel_root:
        link_kernel_tree(args.kernel_root)
    res: dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count()}
    ko = storms.build_kmodstorm(platform.release(), args.cache / "kmodstorm")

    progress("attach time: execsnoop-bpfcc, then kmodtrace")
    res["attach_execsnoop_s"] = attach_execsnoop()
    tracer, res["attach_kmodtrace_s"] = start_tracer(out, "bench")
    stop_tracer(tracer)

    # Overhead: the same storm untraced and traced, alternating, best of two each.
    # A name no module provides keeps the storm repeatable (nothing stays loaded).
    n = args.overhead_count
    untraced, traced = [], []
    tracer, _ = start_tracer(out, "overhead")
    stop_tracer(tracer)  # warm caches the same way for both sides
    for i in range(2):
        progress(f"overhead round {i + 1}: {n} requests untraced, then traced")
        untraced.append(timed_storm(storms.Scenario("u", "kthread", "kmt-bench-none", n), ko))
        tracer, _ = start_tracer(out, f"overhead{i}")
        traced.append(timed_storm(storms.Scenario("t", "kthread", "kmt-bench-none", n), ko))
        stop_tracer(tracer)
    res["overhead_untraced_s"], res["overhead_traced_s"] = untraced, traced

    # Loss: one tracer through every storm, each counted against the tracefs witness.
    tfs = kernel.tracefs()
    assert tfs is not None
    witness = Witness(tfs, buffer_kb=65536)
    witness.start()
    tracer, _ = start_tracer(out, "loss")
    res["rss_start_kib"] = rss_kib(tracer.pid)
    res["vmrss_start_kib"] = rss_kib(tracer.pid, "VmRSS")
    loss: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",") if s]
    scenarios = [storms.Scenario(f"kthread-{s}", "kthread", "kmt-bench-none", s) for s in sizes]
    # A small module: a thousand concurrent loads of a big one exhaust a small guest's vmalloc.
    scenarios.append(storms.Scenario(f"modprobe-{args.modprobes}", "modprobe", "veth",
                                     args.modprobes))
    for sc in scenarios:
        progress(f"loss storm {sc.name}")
        storms.run(sc, ko)
        loss.append({"name": sc.name, "start_ns": sc.start_ns, "end_ns": sc.end_ns})
    res["rss_end_kib"] = rss_kib(tracer.pid)
    res["vmrss_end_kib"] = rss_kib(tracer.pid, "VmRSS")
    stop_tracer(tracer)
    wit = parse(witness.stop())
    trace = read_trace(str(out / "loss.jsonl"))
    for row in loss:
        def inside(ts: int, row: dict[str, Any] = row) -> bool:
            return bool(row["start_ns"] <= ts <= row["end_ns"])
        row["witness_requests"] = sum(1 for w in wit if w.event == "module_request"
                                      and inside(w.ts_ns))
        row["traced_requests"] = sum(1 for e in trace.events if e.kind == 3 and inside(e.ts_ns))
        row["witness_loads"] = sum(1 for w in wit if w.event.startswith("sys_enter_")
                                   and inside(w.ts_ns))
        row["traced_loads"] = sum(1 for e in trace.events if e.kind in (8, 10)
                                  and inside(e.ts_ns))
        row["traced_request_entries"] = sum(1 for e in trace.events if e.kind == 1
                                            and inside(e.ts_ns))
    res["loss"] = loss
    res["lost"] = (trace.trailer or {}).get("lost")
    res["missed"] = (trace.trailer or {}).get("missed")
    res["events"] = len(trace.events)
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    progress("bench done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
