"""`kmodtrace bench`: every figure of bench/RESULTS.md, each a ratio or count measured in
one run (the VM figures side by side in one boot).

1. attach time, ours / bcc's execsnoop-bpfcc (goal <= 0.5), and per build (BTF offsets,
   trimmed includes, no kernel headers): what each step bought
2. loss in storms of 1 000 and 10 000 requests and 1 000 modprobes (goal 0), ring-buffer
   losses and missed kretprobes (goal 0)
3. overhead: storm wall time traced / untraced, medians of alternating rounds (goal <=
   1.02), the recorder's CPU time, and the consumer's py-spy profile
4. offline replay speed from a trace file at 10 000 and 1 000 000 events (goal >= 300 000
   events/s, flat)
5. tracer anonymous RSS over the storms (goal <= +10 %) and over a soak of repeated storms
6. boot delay: 16-vCPU systemd boots with the unit and boot-time tracing (beside mode)
   against boots without the unit, alternating pairs (vmboot): the medians' ratio and
   spread of udevd's start, the coldplug trigger's start, udev's last module load and boot
   finished (goal <= 1.03 each; emulated CPUs make these noisy), and the binary fact from
   systemd's own timestamps: udevd and the trigger started before the unit was ready
7. large traces, host-side (`bench --large-traces` runs only these): `report --json` and
   the text report of 1 000 000 events (goal <= 5 s, <= 500 MB peak RSS each) and
   `report --plot` of 10 000 events (goal <= 2 s), each a whole command in a child process
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmodlab.synth import stream
from tracer.events import Event
from tracer.model import PROFILE_6_5
from tracer.record import TraceWriter, make_header, read_trace
from tracer.session import replay

Echo = Callable[[str], None]


def replay_speeds(sizes: list[int], echo: Echo, rounds: int = 5) -> list[dict[str, float]]:
    """Per trace size: events/s of correlation + model alone, and of a whole replay from a
    trace file (read_trace, then session.replay(): sort, correlate, judge, keep every
    story, what `report` does), in wall and in CPU seconds of this process.

    Each figure is the fastest of several runs, so that it is not one scheduler hiccup or
    another VM's burst: a small trace runs until 100 000 events have gone through, a
    large one once, per round. The file replays of the sizes alternate, round after round,
    so that the per-event costs compared are measured side by side, not minutes apart on
    a host whose speed drifts."""
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for n in sizes:
            echo(f"generating {n} events")
            events = list(stream(n))
            model_s, _ = _best(functools.partial(_replay, events), rounds * _repeats(n))
            paths.append(os.path.join(d, f"synth-{n}.jsonl"))
            _write_trace(paths[-1], events)
            out.append({"events": len(events), "model_events_per_s": len(events) / model_s})
            # The file replay is timed as `report` runs it, without the generated events
            # alive beside the read ones (another million objects to allocate around).
            del events
            gc.collect()
        wall: list[list[float]] = [[] for _ in sizes]
        cpu: list[list[float]] = [[] for _ in sizes]
        for r in range(rounds):
            echo(f"replaying from trace files, round {r + 1} of {rounds}")
            for i, (n, path) in enumerate(zip(sizes, paths, strict=True)):
                w, c = _best(functools.partial(_replay_file, path), _repeats(n))
                wall[i].append(w)
                cpu[i].append(c)
                gc.collect()
    for fig, w_s, c_s in zip(out, wall, cpu, strict=True):
        fig["file_events_per_s"] = fig["events"] / min(w_s)
        fig["file_events_per_cpu_s"] = fig["events"] / min(c_s)
    return out


def _repeats(n: int) -> int:
    """Runs of an N-event trace per round: 100 000 events' worth, at least one."""
    return max(1, 100_000 // n)


def _write_trace(path: str, events: list[Event]) -> None:
    w = TraceWriter(path)
    w.write(make_header({}, [], []))
    for i, ev in enumerate(events, 1):
        w.event(ev)
        if i % 10_000 == 0:  # as the recorder does each poll: unflushed lines pile up
            w.flush()
    w.close({"lost": 0, "missed": 0})


def _best(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """The fastest of ROUNDS runs of FN: (wall seconds, CPU seconds), each its own best."""
    wall, cpu = [], []
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def _replay_file(path: str) -> None:
    _replay(read_trace(path).events)


def _replay(events: list[Event]) -> None:
    """What `report` does with the events read: sort them, correlate, judge, keep every
    story with its verdict (tracer.report.load())."""
    replay(events, PROFILE_6_5)


# Figure 7's sizes and goals (issue #24, 8)
LARGE_EVENTS = 1_000_000
PLOT_EVENTS = 10_000
LARGE_GOAL_S = 5.0
LARGE_GOAL_MB = 500.0
PLOT_GOAL_S = 2.0


def large_trace_figures(echo: Echo, rounds: int = 3, events: int = LARGE_EVENTS,
                        plot_events: int = PLOT_EVENTS) -> dict[str, Any]:
    """Figure 7: `kmodtrace report --json` and `kmodtrace report` of a synthetic trace of
    EVENTS events and `report --plot X.png` of one of PLOT_EVENTS, each ROUNDS times as a
    whole command (interpreter start, read, replay, output to /dev/null) in a child
    process: its wall time, its CPU time (user + system, from wait4) and its peak RSS.
    The commands alternate round after round, so that a burst of the host's other load is
    spread over them; the load average before and after says how shared the host was."""
    res: dict[str, Any] = {"events": events, "plot_events": plot_events,
                           "loadavg_before": os.getloadavg()[0]}
    runs: dict[str, list[dict[str, float]]] = {"json": [], "text": [], "plot": []}
    with tempfile.TemporaryDirectory() as d:
        big, small = os.path.join(d, "large.jsonl"), os.path.join(d, "plot.jsonl")
        for path, n in ((big, events), (small, plot_events)):
            echo(f"generating {n} events")
            # in a child: a child's peak RSS starts from what its parent held when it
            # forked, and a million generated events would stay in this one's heap
            subprocess.run([sys.executable, "-c", "import sys; from kmodlab import bench; "
                            "bench.write_synthetic(sys.argv[1], int(sys.argv[2]))",
                            path, str(n)], check=True)
        for r in range(rounds):
            for what, args in (("json", ["--json", big]), ("text", [big]),
                               ("plot", ["--plot", os.path.join(d, f"p{r}.png"), small])):
                echo(f"report {what}, round {r + 1} of {rounds}")
                runs[what].append(_run_measured([sys.executable, "-m", "tracer", "report",
                                                 *args]))
    return res | runs | {"loadavg_after": os.getloadavg()[0]}


def write_synthetic(path: str, events: int) -> None:
    """A trace file of about EVENTS synthetic events (kmodlab/synth.py) in PATH."""
    _write_trace(path, list(stream(events)))


def _run_measured(argv: list[str]) -> dict[str, float]:
    """ARGV's wall seconds, CPU seconds and peak RSS (MB) as the kernel counted them for
    it alone (wait4), its standard output thrown away."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): "
                           f"{err.decode(errors='replace')[-500:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "rss_mb": ru.ru_maxrss * 1024 / 1e6}


def vm_figures(kernel_spec: str, out: Path, echo: Echo, sizes: str, modprobes: int,
               overhead_count: int, soak_s: float = 600) -> dict[str, Any]:
    from kmodlab import vm

    kern = vm.resolve_kernel(kernel_spec, echo)
    # kmodlab.benchguest instead of kmodlab.guest; 4 GiB for 10 000 kthreads and 1 000 modprobes
    rc = vm.run_guest(kern, out, ["--sizes", sizes, "--modprobes", str(modprobes),
                                  "--overhead-count", str(overhead_count),
                                  "--soak-s", str(soak_s)], echo,
                      memory="4G", module="kmodlab.benchguest", timeout=1500 + soak_s)
    if rc != 0:
        raise vm.VMError(f"bench guest failed with {rc}")
    result: dict[str, Any] = json.loads((out / "bench.json").read_text())
    if (out / "pyspy.txt").exists():
        result["pyspy_top"] = pyspy_top((out / "pyspy.txt").read_text())
    return result


BOOT_PAIRS = 3
BOOT_CPUS = 16
BOOT_GOAL = 1.03
# (summary key, what it is), each seconds after systemd (PID 1) started
BOOT_METRICS = (("udevd_s", "udevd started"), ("trigger_s", "coldplug trigger started"),
                ("udev_last_load_s", "udev's last module load"),
                ("boot_finished_s", "boot finished"))


def udev_last_load_s(witness_text: str, stats: dict[str, Any]) -> float | None:
    """When udev's coldplug stopped loading modules: the end of the last (f)init_module call
    of a udev worker in the kernel's own record (the witness, on both sides of a pair),
    seconds after systemd started. The udev queue's own end is not recorded by the boot."""
    from kmodlab.witness import parse
    from tracer.udev import is_worker

    ends = [w.ts_ns for w in parse(witness_text)
            if w.event in ("sys_exit_finit_module", "sys_exit_init_module") and is_worker(w.comm)]
    userspace = stats.get("manager", {}).get("UserspaceTimestampMonotonic", "")
    if not ends or not str(userspace).isdigit():
        return None
    return (max(ends) - int(userspace) * 1000) / 1e9


def boot_figures(kernel_spec: str, out: Path, echo: Echo, pairs: int = BOOT_PAIRS,
                 cpus: int = BOOT_CPUS) -> dict[str, Any]:
    """PAIRS pairs of real systemd boots on CPUS vCPUs (vmboot), alternating without and with
    the unit (and the boot-time tracing words: beside mode): each boot's summary of
    systemd's timestamps, and udev's last load from the witness."""
    from kmodlab import vm, vmboot

    kern = vm.resolve_kernel(kernel_spec, echo)
    res: dict[str, Any] = {"cpus": cpus, "no_unit": [], "unit": []}
    for i in range(pairs):
        for unit in (False, True):
            d = out / f"boot{i + 1}-{'unit' if unit else 'no-unit'}"
            rc = vmboot.run_boot(kern, d, echo, cpus=cpus, memory="4G", unit=unit)
            summary: dict[str, Any] = {"rc": rc}
            if rc == 0:
                stats = json.loads((d / "bootstats.json").read_text())
                summary = dict(stats.get("summary", {}))
                last = udev_last_load_s((d / "witness.txt").read_text(errors="replace"), stats)
                if last is not None:
                    summary["udev_last_load_s"] = last
            res["unit" if unit else "no_unit"].append(summary)
    return res


def boot_comparison(boot: dict[str, Any]) -> dict[str, Any]:
    """Per metric, the medians with and without the unit, their ratio and each side's
    spread (min, max); not_held: whether in every boot with the unit udevd and the trigger
    started before it was ready (None where a boot does not say)."""
    no = [s for s in boot.get("no_unit", []) if isinstance(s, dict)]
    yes = [s for s in boot.get("unit", []) if isinstance(s, dict)]
    out: dict[str, Any] = {"pairs": min(len(no), len(yes)), "metrics": {}}
    for key, _ in BOOT_METRICS:
        a = [s[key] for s in no if isinstance(s.get(key), (int, float))]
        b = [s[key] for s in yes if isinstance(s.get(key), (int, float))]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        out["metrics"][key] = {"without": ma, "with": mb, "ratio": mb / ma if ma else None,
                               "spread_without": (min(a), max(a)),
                               "spread_with": (min(b), max(b)), "n": (len(a), len(b))}
    facts = [s.get("udev_started_before_ready") for s in yes]
    out["not_held"] = None if not facts or None in facts else all(facts)
    return out


def pyspy_top(raw: str, n: int = 8) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the most sampled functions in py-spy's raw
    (collapsed stack) output: what the consumer spends its time in."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        samples += c
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            total[f] = total.get(f, 0) + c
    top = sorted(own, key=lambda f: -own[f])[:n]
    return [(f, 100 * own[f] / samples, 100 * total[f] / samples) for f in top]


def render(replays: list[dict[str, float]], vmres: dict[str, Any] | None,
           boot: dict[str, Any] | None = None,
           large: dict[str, Any] | None = None) -> list[str]:
    lines = []

    def row(what: str, figure: str, goal: str, ok: bool | None) -> None:
        verdict = "REPORTED" if ok is None else "MET" if ok else "MISSED"
        lines.append(f"{what:<44} {figure:<36} {goal:<18} {verdict}")

    def note(text: str) -> None:
        lines.append(f"   ({text})")

    lines.append(f"{'FIGURE':<44} {'MEASURED':<36} {'GOAL':<18} VERDICT")
    if vmres is not None:
        ours, theirs = vmres["attach_kmodtrace_s"], vmres["attach_execsnoop_s"]
        row("1. attach time kmodtrace / execsnoop-bpfcc", f"{ours / theirs:.2f}x "
            f"({ours:.1f}s / {theirs:.1f}s)", "<= 0.50x", ours / theirs <= 0.5)
        note(f"kmodtrace record, {vmres.get('attach_kmodtrace_build', '?')} build; execsnoop "
             f"runs {', '.join(f'{x:.1f}s' for x in vmres.get('attach_execsnoop_runs_s', []))}"
             f", the faster counted")
        for b in vmres.get("attach_builds", []):
            if "error" in b:
                note(f"{b['build']} build: failed: {b['error']}")
                continue
            ph = ", ".join(f"{k} {v:.1f}" for k, v in b["phases"].items())
            note(f"{b['build']:<11} build: {b['wall_s']:5.1f}s from exec = "
                 f"{b['wall_s'] / theirs:.2f}x execsnoop; attach() {b['attach_s']:.1f}s: {ph}")
        for s in vmres["loss"]:
            lost_r = s["witness_requests"] - s["traced_requests"]
            lost_l = s["witness_loads"] - s["traced_loads"]
            row(f"2. loss, storm {s['name']}", f"{lost_r} requests, {lost_l} loads "
                f"(of {s['witness_requests']}/{s['witness_loads']})", "0",
                lost_r == 0 and lost_l == 0)
        row("2. ring buffer lost / kretprobes missed", f"{vmres['lost']} / {vmres['missed']} "
            f"of {vmres['events']} events", "0 / 0", vmres["lost"] == 0 and vmres["missed"] == 0)
        if vmres.get("rescue"):
            r = vmres["rescue"]
            note(f"returns of requests without a kretprobe instance, emitted by a call site, "
                 f"the throttle fexit or a saved return: {r['emitted']}; the kretprobe saw "
                 f"{r['seen_too']} of them too, wrong {r['wrong']}")
        ut, tt = vmres["overhead_untraced_s"], vmres["overhead_traced_s"]
        mu, mt = statistics.median(ut), statistics.median(tt)
        row("3. storm wall time traced / untraced", f"{mt / mu:.3f}x ({mt:.2f}s / {mu:.2f}s)",
            "<= 1.02x", mt / mu <= 1.02)
        note(f"medians of {len(tt)} rounds, the order swapped each round; best of each: "
             f"{min(tt) / min(ut):.3f}x ({min(tt):.2f}s / {min(ut):.2f}s)")
        note("rounds untraced " + ", ".join(f"{x:.2f}s" for x in ut)
             + "; traced " + ", ".join(f"{x:.2f}s" for x in tt))
        if vmres.get("overhead_tracer_cpu_s"):
            cpu = vmres["overhead_tracer_cpu_s"]
            note("the recorder's CPU during each traced storm: "
                 + ", ".join(f"{x:.2f}s" for x in cpu)
                 + f" (median {statistics.median(cpu):.2f}s of {mt:.2f}s on "
                 f"{vmres.get('cpus', '?')} vCPUs)")
        for f, own, tot in vmres.get("pyspy_top", []):
            note(f"py-spy self {own:5.1f}% total {tot:5.1f}%  {f}")
    if replays:
        small, big = replays[0], replays[-1]
        for key, what in (("model_events_per_s", "correlation + model"),
                          ("file_events_per_s", "from a trace file")):
            row(f"4. offline replay, {what}", f"{small[key]:,.0f} / {big[key]:,.0f} ev/s "
                f"({small['events'] / 1000:,.0f}k / {big['events'] / 1000:,.0f}k)",
                ">= 300,000 ev/s", min(small[key], big[key]) >= 300_000)
        if "file_events_per_cpu_s" in small:
            note(f"from a trace file in CPU seconds: {small['file_events_per_cpu_s']:,.0f} / "
                 f"{big['file_events_per_cpu_s']:,.0f} ev/s, "
                 f"{big['file_events_per_cpu_s'] / small['file_events_per_cpu_s']:.2f}x")
        flat = big["file_events_per_s"] / small["file_events_per_s"]
        row("4. replay cost per event, flat", f"{flat:.2f}x the small trace's rate",
            ">= 0.80x", flat >= 0.8)
    if vmres is not None:
        a, b = vmres["rss_start_kib"], vmres["rss_end_kib"]
        row("5. tracer anonymous RSS over the storms", f"{a / 1024:.1f} -> {b / 1024:.1f} MiB "
            f"({100 * (b / a - 1):+.1f}%)", "<= +10%", b <= a * 1.1)
        if "rss_ready_kib" in vmres:
            note(f"measured 2 s after attach; at attach {vmres['rss_ready_kib'] / 1024:.1f} MiB")
        va, vb = vmres.get("vmrss_start_kib", 0), vmres.get("vmrss_end_kib", 0)
        note(f"VmRSS {va / 1024:.1f} -> {vb / 1024:.1f} MiB: includes the ring "
             f"buffer's pages, resident once written")
        soak = vmres.get("soak") or []
        if soak:
            first, last = soak[0][1], soak[-1][1]
            peak = max(r for _, r in soak)
            row(f"5. RSS over a {soak[-1][0] / 60:.0f}-minute soak ({len(soak)} storms)",
                f"{first / 1024:.1f} -> {last / 1024:.1f} MiB (peak {peak / 1024:.1f})",
                "<= +10%", last <= first * 1.1)
    if boot is not None:
        cmp = boot_comparison(boot)
        cpus = boot.get("cpus", "?")
        if not cmp["metrics"]:
            row(f"6. boot with the unit / without ({cpus} vCPUs)", f"no figure: {boot}",
                f"<= {BOOT_GOAL}", False)
        for key, what in BOOT_METRICS:
            m = cmp["metrics"].get(key)
            if m is None or m["ratio"] is None:
                continue
            (a0, a1), (b0, b1) = m["spread_without"], m["spread_with"]
            row(f"6. {what}, with the unit / without ({cpus} vCPUs, median of "
                f"{cmp['pairs']} pairs)", f"{m['ratio']:.2f}x ({m['with']:.1f}s / "
                f"{m['without']:.1f}s; {b0:.1f}-{b1:.1f} / {a0:.1f}-{a1:.1f})",
                f"<= {BOOT_GOAL}", m["ratio"] <= BOOT_GOAL)
        row("6. udevd and the trigger started before the unit was ready (systemd's "
            "timestamps, every boot with the unit)",
            {True: "yes", False: "NO: udev was held", None: "no figure"}[cmp["not_held"]],
            "yes", cmp["not_held"])
        note("emulated CPUs on a shared host make the ratios noisy: the verdict is the last row")
    if large is not None:
        large_rows(large, row, note)
    return lines


def _spread(xs: list[float], fmt: str) -> str:
    """'median (min-max)' of XS."""
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def large_rows(large: dict[str, Any], row: Callable[[str, str, str, bool | None], None],
               note: Callable[[str], None]) -> None:
    """Figure 7's rows: per command its wall time, CPU time and peak RSS, the median of the
    rounds with their range, each against its goal (time: the median; RSS: the peak)."""
    n, pn = large["events"], large["plot_events"]
    for what, label, size, goal_s, goal_mb in (
            ("json", "report --json", n, LARGE_GOAL_S, LARGE_GOAL_MB),
            ("text", "report (text)", n, LARGE_GOAL_S, LARGE_GOAL_MB),
            ("plot", "report --plot PNG", pn, PLOT_GOAL_S, None)):
        runs = large[what]
        if not runs:
            continue
        wall = [r["wall_s"] for r in runs]
        cpu = [r["cpu_s"] for r in runs]
        rss = [r["rss_mb"] for r in runs]
        head = f"7. {label}, {size / 1000:,.0f}k events"
        row(f"{head}: wall", _spread(wall, ".1f") + " s", f"<= {goal_s:.0f} s",
            statistics.median(wall) <= goal_s)
        row(f"{head}: CPU", _spread(cpu, ".1f") + " s", f"<= {goal_s:.0f} s",
            statistics.median(cpu) <= goal_s)
        row(f"{head}: peak RSS", _spread(rss, ".0f") + " MB",
            "none set" if goal_mb is None else f"<= {goal_mb:.0f} MB",
            None if goal_mb is None else max(rss) <= goal_mb)
    note(f"medians of {len(large['json'])} rounds (min-max), each a whole command in a child "
         f"process; load average {large['loadavg_before']:.1f} before, "
         f"{large['loadavg_after']:.1f} after: wall time includes waiting for a CPU on a "
         f"shared host, CPU time does not")
