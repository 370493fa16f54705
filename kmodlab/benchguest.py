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


def attach_once_child() -> int:
    """In a fresh process (the user's cold start): attach, print attach()'s phases as JSON."""
    t0 = time.monotonic()
    from tracer.probes import Tracer

    tracer = Tracer(lambda ev: None, notice=lambda m: None)
    attached = tracer.attach()
    tracer.close()
    print(json.dumps({"build": attached.build, "attach_s": attached.attach_s,
                      "in_process_s": time.monotonic() - t0, "phases": attached.phases}),
          flush=True)
    return 0


def attach_build(build: str) -> dict[str, Any]:
    """Seconds from exec until the probes are attached, with KMODTRACE_BUILD=BUILD."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kmodlab.benchguest", "--attach-once"],
                       capture_output=True, text=True, check=False,
                       env=dict(os.environ, KMODTRACE_BUILD=build))
    wall = time.monotonic() - t0
    if p.returncode != 0:
        return {"build": build, "error": p.stderr.strip().splitlines()[-1:]}
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    progress(f"attach, {build} build: {wall:.1f}s {res['phases']}")
    return res


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


def cpu_s(pid: int) -> float:
    """User and system CPU seconds process PID has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _attached_build(log: Path) -> str:
    """The build `kmodtrace record` reported in its "Attached ..." line."""
    for line in log.read_text().splitlines():
        if line.startswith("Attached ") and " build)" in line:
            return line.rsplit(", ", 1)[1].split(" ")[0]
    return "?"


def profile_storm(out: Path, sc: storms.Scenario, ko: Path) -> None:
    """py-spy samples the tracer's consumer through one traced storm (raw collapsed
    stacks in OUT/pyspy.txt); a storm of its own, the profiler slows what it samples."""
    tracer, _ = start_tracer(out, "profiled")
    # --idle: time blocked in the ring-buffer poll shows as such (the consumer's slack)
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                            "--format", "raw", "--idle", "--rate", "200",
                            "-o", str(out / "pyspy.txt"), "--pid", str(tracer.pid)],
                           stdout=subprocess.DEVNULL,
                           stderr=open(out / "pyspy.log", "wb"))  # noqa: SIM115
    time.sleep(2)
    storms.run(sc, ko)
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=120)
    stop_tracer(tracer)


def soak(out: Path, seconds: float, ko: Path) -> list[tuple[float, int]]:
    """Storms of 1 000 requests back to back for SECONDS under one recorder: (time, the
    recorder's anonymous RSS in KiB) after each."""
    tracer, _ = start_tracer(out, "soak")
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        storms.run(storms.Scenario(f"soak-{i}", "kthread", "kmt-bench-none", 1000), ko)
        samples.append((time.monotonic() - t0, rss_kib(tracer.pid)))
        i += 1
    progress(f"soak: {i} storms in {time.monotonic() - t0:.0f}s, RSS {samples[0][1]} -> "
             f"{samples[-1][1]} KiB")
    stop_tracer(tracer)
    return samples


def timed_storm(sc: storms.Scenario, ko: Path) -> float:
    t0 = time.monotonic()
    storms.run(sc, ko)
    return time.monotonic() - t0 - (1.5 if sc.generator == "kthread" else 0.5)  # run()'s sleeps


def main() -> int:
    if sys.argv[1:] == ["--attach-once"]:  # attach_build's child
        return attach_once_child()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--kernel-root", type=Path)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--modprobes", type=int, default=1000)
    ap.add_argument("--overhead-count", type=int, default=1000)
    ap.add_argument("--overhead-rounds", type=int, default=5)
    ap.add_argument("--soak-s", type=float, default=600)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.kernel_root:
        link_kernel_tree(args.kernel_root)
    res: dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count()}
    ko = storms.build_kmodstorm(platform.release(), args.cache / "kmodstorm")

    # execsnoop before and after our builds (the kernel headers' page cache warm for
    # both); then `kmodtrace record` as a user starts it (the default build), the figure.
    progress("attach time: execsnoop-bpfcc, kmodtrace per build, execsnoop, kmodtrace")
    res["attach_execsnoop_runs_s"] = [attach_execsnoop()]
    res["attach_builds"] = [attach_build(b) for b in ("headers", "btf-headers", "btf")]
    res["attach_execsnoop_runs_s"].append(attach_execsnoop())
    res["attach_execsnoop_s"] = min(res["attach_execsnoop_runs_s"])
    tracer, res["attach_kmodtrace_s"] = start_tracer(out, "bench")
    stop_tracer(tracer)
    res["attach_kmodtrace_build"] = _attached_build(out / "bench.log")

    # Overhead: the same storm untraced and traced, ROUNDS times, the order swapped every
    # round (the first storm of a round ran slower in an A/B, whichever side it was). A
    # name no module provides keeps the storm repeatable (nothing stays loaded).
    n = args.overhead_count
    untraced: list[float] = []
    traced: list[float] = []
    cpu: list[float] = []  # the recorder's CPU seconds during each traced storm
    tracer, _ = start_tracer(out, "overhead")
    stop_tracer(tracer)  # warm caches the same way for both sides
    for i in range(args.overhead_rounds):
        sides = ("untraced", "traced") if i % 2 == 0 else ("traced", "untraced")
        progress(f"overhead round {i + 1}: {n} requests {sides[0]}, then {sides[1]}")
        for side in sides:
            sc = storms.Scenario(side[0], "kthread", "kmt-bench-none", n)
            if side == "untraced":
                untraced.append(timed_storm(sc, ko))
                continue
            tracer, _ = start_tracer(out, f"overhead{i}")
            time.sleep(1)  # its start-up done: the storm meets the steady state
            c0 = cpu_s(tracer.pid)
            traced.append(timed_storm(sc, ko))
            cpu.append(cpu_s(tracer.pid) - c0)
            stop_tracer(tracer)
    res["overhead_tracer_cpu_s"] = cpu
    res["overhead_untraced_s"], res["overhead_traced_s"] = untraced, traced
    progress(f"profiling the consumer with py-spy: {n} requests traced")
    profile_storm(out, storms.Scenario("p", "kthread", "kmt-bench-none", n), ko)

    # Loss: one tracer through every storm, each counted against the tracefs witness.
    tfs = kernel.tracefs()
    assert tfs is not None
    witness = Witness(tfs, buffer_kb=65536)
    witness.start()
    tracer, _ = start_tracer(out, "loss")
    res["rss_ready_kib"] = rss_kib(tracer.pid)
    time.sleep(2)  # the growth over the storms, not the rest of its start-up
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
    res["rescue"] = (trace.trailer or {}).get("rescue")
    res["events"] = len(trace.events)
    if args.soak_s > 0:
        progress(f"soak: storms of 1000 requests for {args.soak_s:.0f}s")
        res["soak"] = soak(out, args.soak_s, ko)
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    progress("bench done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
