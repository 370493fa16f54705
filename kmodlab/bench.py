"""`kmodtrace bench`: the five figures, each a ratio or count measured in one run.

1. attach time, ours / bcc's execsnoop-bpfcc (goal <= 0.8)
2. loss in storms of 1 000 and 10 000 requests and 1 000 modprobes (goal 0)
3. overhead: storm wall time traced / untraced (goal <= 1.02)
4. offline replay speed on 1 000 000 generated events (goal >= 300 000 events/s)
5. tracer RSS at the start and end of the storms (goal: flat)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmodlab.synth import stream
from tracer.correlate import Correlator
from tracer.model import PROFILE_6_5
from tracer.record import TraceWriter, make_header, read_trace
from tracer.session import Judge

Echo = Callable[[str], None]


def replay_speed(n: int, echo: Echo) -> dict[str, float]:
    """Events/s of correlation + model alone, and of a whole report from a trace file."""
    echo(f"generating {n} events")
    events = list(stream(n))
    judge = Judge(PROFILE_6_5)
    corr = Correlator(judge)
    t0 = time.perf_counter()
    for ev in events:
        corr.feed(ev)
    model_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "synth.jsonl")
        w = TraceWriter(path)
        w.write(make_header({}, [], []))
        for ev in events:
            w.event(ev)
        w.close({"lost": 0, "missed": 0})
        echo("replaying from a trace file")
        t0 = time.perf_counter()
        trace = read_trace(path)
        corr2 = Correlator(Judge(PROFILE_6_5))
        for ev in trace.events:
            corr2.feed(ev)
        file_s = time.perf_counter() - t0
    return {"events": len(events), "model_events_per_s": len(events) / model_s,
            "file_events_per_s": len(events) / file_s,
            "state_after": float(sum(judge.model.state_sizes().values()))}


def vm_figures(kernel_spec: str, out: Path, echo: Echo, sizes: str, modprobes: int,
               overhead_count: int) -> dict[str, Any]:
    from kmodlab import vm

    kern = vm.resolve_kernel(kernel_spec, echo)
    # kmodlab.benchguest instead of kmodlab.guest; 4 GiB for 10 000 kthreads and 1 000 modprobes
    rc = vm.run_guest(kern, out, ["--sizes", sizes, "--modprobes", str(modprobes),
                                  "--overhead-count", str(overhead_count)], echo,
                      memory="4G", module="kmodlab.benchguest")
    if rc != 0:
        raise vm.VMError(f"bench guest failed with {rc}")
    result: dict[str, Any] = json.loads((out / "bench.json").read_text())
    return result


def render(replay: dict[str, float], vmres: dict[str, Any] | None) -> list[str]:
    lines = []

    def row(what: str, figure: str, goal: str, ok: bool) -> None:
        lines.append(f"{what:<44} {figure:<34} {goal:<18} {'MET' if ok else 'MISSED'}")

    lines.append(f"{'FIGURE':<44} {'MEASURED':<34} {'GOAL':<18} VERDICT")
    if vmres is not None:
        ours, theirs = vmres["attach_kmodtrace_s"], vmres["attach_execsnoop_s"]
        row("1. attach time kmodtrace / execsnoop-bpfcc", f"{ours / theirs:.2f}x "
            f"({ours:.1f}s / {theirs:.1f}s)", "<= 0.80x", ours / theirs <= 0.8)
        for s in vmres["loss"]:
            lost_r = s["witness_requests"] - s["traced_requests"]
            lost_l = s["witness_loads"] - s["traced_loads"]
            row(f"2. loss, storm {s['name']}", f"{lost_r} requests, {lost_l} loads "
                f"(of {s['witness_requests']}/{s['witness_loads']})", "0",
                lost_r == 0 and lost_l == 0)
        row("2. ring buffer lost / kretprobes missed", f"{vmres['lost']} / {vmres['missed']} "
            f"of {vmres['events']} events", "0 / 0", vmres["lost"] == 0 and vmres["missed"] == 0)
        u, t = min(vmres["overhead_untraced_s"]), min(vmres["overhead_traced_s"])
        row("3. storm wall time traced / untraced", f"{t / u:.3f}x ({t:.2f}s / {u:.2f}s)",
            "<= 1.02x", t / u <= 1.02)
    row("4. offline replay, correlation + model", f"{replay['model_events_per_s']:,.0f} ev/s",
        ">= 300,000 ev/s", replay["model_events_per_s"] >= 300_000)
    row("4. offline replay, from a trace file", f"{replay['file_events_per_s']:,.0f} ev/s",
        ">= 300,000 ev/s", replay["file_events_per_s"] >= 300_000)
    if vmres is not None:
        a, b = vmres["rss_start_kib"], vmres["rss_end_kib"]
        row("5. tracer anonymous RSS start -> end", f"{a / 1024:.1f} -> {b / 1024:.1f} MiB",
            "flat (<= +10%)", b <= a * 1.1)
        va, vb = vmres.get("vmrss_start_kib", 0), vmres.get("vmrss_end_kib", 0)
        lines.append(f"   (VmRSS {va / 1024:.1f} -> {vb / 1024:.1f} MiB: includes the ring "
                     f"buffer's pages, resident once written)")
    return lines
