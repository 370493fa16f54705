"""The Report: everything a view of a trace shows, counted once.

build() makes it from a replayed trace, from_live() at live's exit from what live kept.
The text report, `report --json`, `boot show`, `boot diff` and live's exit summary
(tracer.report, tracer.bootdiff, tracer.live) only render it: no view counts anything
itself, so no two views can disagree on a count (coverage.py's `Analysis` and its
reporters are the pattern).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tracer import bymodule, early
from tracer.bymodule import ModuleRow
from tracer.kernel import Features, announce_form
from tracer.model import LoadVerdict, ModuleStats, Profile, RequestVerdict
from tracer.record import Procs, Trace, read_trace
from tracer.session import Replay, listed_hooks, replay
from tracer.stories import Load, Request, kmod_name

JudgedRequest = tuple[Request, RequestVerdict | None]
JudgedLoad = tuple[Load, LoadVerdict | None]


class Filter:
    """What -p, -m and -x keep (live, report, boot show): a story of that pid, of that
    module (dashes = underscores), a duplicate, a failure or a load that wasted memory."""

    def __init__(self, pid: int | None, module: str | None, failed_only: bool = False) -> None:
        self.pid = pid
        self.module = kmod_name(module) if module else None
        self.failed_only = failed_only

    @property
    def active(self) -> bool:
        return self.pid is not None or self.module is not None or self.failed_only

    def describe(self) -> str:
        """What it keeps, in words: "pid 7, module xfs, duplicates and failures"."""
        parts = [f"pid {self.pid}"] if self.pid is not None else []
        parts += [f"module {self.module}"] if self.module is not None else []
        return ", ".join(parts + (["duplicates and failures"] if self.failed_only else []))

    def request(self, req: Request, v: RequestVerdict | None = None,
                led_to: Collection[str] = ()) -> bool:
        """LED_TO: the modules the request led to (its modprobe's loads), where known."""
        if self.pid is not None and req.pid != self.pid:
            return False
        if self.failed_only and not (req.rejected or req.ret not in (0, None)
                                     or (v is not None and v.verdict in ("duplicate",
                                                                         "rejected"))):
            return False
        if self.module is not None:
            names = {kmod_name(req.display_name), kmod_name(req.umh_name), *led_to}
            return self.module in names
        return True

    def load(self, load: Load, v: LoadVerdict | None = None) -> bool:
        if self.pid is not None and load.pid != self.pid:
            return False
        if self.failed_only and not (load.ret not in (0, None) or (
                v is not None and (v.outcome != "loaded" or v.wasted_bytes))):
            return False
        return self.module is None or load.module == self.module


def _int(v: object) -> int | None:
    """A recorder's number, or None where a damaged header or trailer holds something else."""
    return v if type(v) is int else None


@dataclass(frozen=True, slots=True)
class Loss:
    """What the trace could not see, so that nothing is dropped in silence."""

    events: int  # events read (a trace) or fed to the correlator (live)
    lost: int | None  # ring-buffer records dropped; None: no trailer says
    missed: int | None  # probe runs the kernel skipped
    # the trailer's `misses`: hook name -> runs skipped; None from a recorder that
    # did not count them (older traces), which is not "none skipped"
    by_hook: Mapping[str, int] | None
    complete: bool  # the trailer was written (the recorder was not killed)
    bad_lines: int
    first_bad_line: int | None
    # failed loads MODULE_STATS charged info->len for with no MOD_LEN event showing it (a
    # missed module_sig_check() return, a full map, no MODULE_SIG): the size stood for it
    len_unknown: int = 0
    first_bad_why: str | None = None  # what is wrong with the first bad line (record.py)

    @property
    def dropped(self) -> bool:
        """Events were lost or missed: every count is a lower bound."""
        return bool(self.lost or self.missed)

    @property
    def unknown(self) -> bool:
        """The trace cannot say what was dropped (no trailer, no counter, unreadable
        lines): every count is a lower bound too."""
        return (self.lost is None or self.missed is None or not self.complete
                or self.first_bad_line is not None)


def trace_loss(trace: Trace) -> Loss:
    trailer = trace.trailer or {}
    misses = trailer.get("misses")
    by_hook = {str(h): n for h, n in misses.items() if type(n) is int} \
        if isinstance(misses, dict) else None
    return Loss(len(trace.events), _int(trailer.get("lost")), _int(trailer.get("missed")),
                by_hook, trace.trailer is not None, trace.bad_lines, trace.first_bad_line,
                first_bad_why=trace.first_bad_why)


@dataclass(frozen=True, slots=True)
class Loading:
    """How much of the traced time went to module loading, and what the repeats cost."""

    traced_from_ns: int | None  # the early trace's start, else the attach
    tracer_attached_ns: int | None
    traced_to_ns: int | None
    busy_ns: int | None  # time with a load in flight; None: live keeps no stories to tell
    attempts: int  # (f)init_module calls, unnamed ones included
    modules: int  # rows of by_module (named modules)
    repeated_modules: tuple[str, ...]  # tried more than once, sorted
    extra_attempts: int  # attempts past the first of each repeated module
    wasted_bytes: int  # MODULE_STATS bytes the failed attempts cost, unnamed ones included
    load_ns: int  # time in (f)init_module calls, summed over calls

    @property
    def traced_ns(self) -> int | None:
        start, end = self.traced_from_ns, self.traced_to_ns
        return None if start is None or end is None else end - start


def loading(rows: Mapping[str, ModuleRow], busy_ns: int | None, attached_ns: int | None,
            traced_from_ns: int | None, traced_to_ns: int | None,
            unnamed: ModuleRow | None = None) -> Loading:
    """The loading figures, each summed once from the per-module rows and the unnamed
    loads' row (attempts, bytes and time count; it is no module, so no repeat)."""
    repeated = [r for r in rows.values() if r.repeated]
    every = [*rows.values(), *([unnamed] if unnamed is not None else [])]
    return Loading(
        traced_from_ns=traced_from_ns, tracer_attached_ns=attached_ns,
        traced_to_ns=traced_to_ns, busy_ns=busy_ns,
        attempts=sum(r.attempts for r in every), modules=len(rows),
        repeated_modules=tuple(sorted(r.module for r in repeated)),
        extra_attempts=sum(r.attempts - 1 for r in repeated),
        wasted_bytes=sum(r.wasted_bytes for r in every),
        load_ns=sum(r.load_ns for r in every),
    )


@dataclass(frozen=True, slots=True)
class Narrowed:
    """A Report cut to what a Filter keeps, and how much there was before."""

    filter: Filter
    requests: int  # stories and per-module rows of the whole trace
    loads: int
    modules: int


@dataclass(frozen=True, slots=True)
class Report:
    """A trace judged: its stories, its rows, its figures and its losses."""

    kernel: str | None
    boot_id: str | None
    cpus: int | None
    features: Features  # the kernel facts: the profile, the announce form, stats source
    # Every story with its verdict, in completion order; empty from live, which printed
    # each as it finished and keeps none (bounded memory).
    requests: tuple[JudgedRequest, ...]
    loads: tuple[JudgedLoad, ...]
    modules: Mapping[str, ModuleStats]  # the model's rows, keyed as dups.c keys
    by_module: Mapping[str, ModuleRow]  # one row per kernel module; no "" key
    loading: Loading
    loss: Loss
    procs: Procs  # (pid, comm) -> (cmdline, parents), as the recorder saw them
    ksyms: Mapping[int, str]  # call site -> symbol
    early: dict[str, Any] | None  # the early trace's record, if one was drained
    early_events: int
    unnamed: ModuleRow | None = None  # loads the kernel could not name (EFAULT init_module)
    narrowed: Narrowed | None = None  # what filter cut this Report, if one did

    @property
    def profile(self) -> Profile:
        return self.features.profile

    @property
    def t0_ns(self) -> int:
        """Story times are shown from here: when the tracer attached."""
        return self.loading.tracer_attached_ns or 0


def build(trace: Trace, rep: Replay) -> Report:
    """The Report of a trace and its replay: every figure counted here, once."""
    h = trace.header
    acc = bymodule.accumulate(rep.requests, rep.loads)
    rows, unnamed = acc.rows(), acc.unnamed()
    start = _int(h.get("start_mono_ns"))
    kernel, boot_id = h.get("kernel"), h.get("boot_id")
    return Report(
        kernel=kernel if isinstance(kernel, str) else None,
        boot_id=boot_id if isinstance(boot_id, str) else None,
        cpus=_int(h.get("cpus")), features=trace.features,
        requests=tuple(rep.requests), loads=tuple(rep.loads),
        modules=rep.judge.model.modules(), by_module=rows,
        loading=loading(rows, bymodule.busy_ns(ld for ld, _ in rep.loads), start,
                        early.traced_from_ns(trace.early, start),
                        _int((trace.trailer or {}).get("end_mono_ns")), unnamed),
        # the events counted as the replay fed them: it may have consumed trace.events
        loss=replace(trace_loss(trace), events=rep.correlator.events,
                     len_unknown=rep.judge.model.stats().len_unknown),
        procs=trace.procs, ksyms=trace.ksyms,
        early=trace.early, early_events=trace.early_events, unnamed=unnamed,
    )


def from_live(features: Features, modules: Mapping[str, ModuleStats],
              rows: Mapping[str, ModuleRow], loss: Loss, window: tuple[int, int],
              end_ns: int, unnamed: ModuleRow | None = None) -> Report:
    """The Report at live's exit: its rows and counters, no stories (printed already).
    WINDOW: when attaching began and ended."""
    return Report(
        kernel=features.release, boot_id=None, cpus=None, features=features,
        requests=(), loads=(), modules=modules, by_module=rows,
        loading=loading(rows, None, window[1], window[0], end_ns, unnamed), loss=loss,
        procs={}, ksyms={}, early=None, early_events=0, unnamed=unnamed,
    )


def only_module(report: Report, module: str) -> Report:
    """REPORT narrowed to one kernel module's rows (live -m)."""
    rows = {k: r for k, r in report.by_module.items() if k == module}
    lo = report.loading
    return replace(
        report, by_module=rows, unnamed=None,
        modules={k: m for k, m in report.modules.items() if kmod_name(k) == module},
        loading=loading(rows, lo.busy_ns, lo.tracer_attached_ns, lo.traced_from_ns,
                        lo.traced_to_ns))


def narrow(report: Report, flt: Filter) -> Report:
    """REPORT cut to the stories FLT keeps (report and boot show -p, -m, -x) and to the
    per-module rows those stories touch, each row with its figures over the whole trace
    (a row is a module's story, not a pid's); `loading` sums the rows kept. The model's
    rows kept are the kept requests' strings and the kept rows' names. Verdicts and
    losses are the whole trace's: nothing is judged again."""
    if not flt.active:
        return report
    acc = bymodule.accumulate(report.requests, report.loads)

    def led_to(req: Request) -> set[str]:
        return acc.modules_of(req.display_name) or {req.display_name}

    requests = tuple((q, v) for q, v in report.requests if flt.request(q, v, led_to(q)))
    loads = tuple((ld, v) for ld, v in report.loads if flt.load(ld, v))
    names = {ld.module for ld, _ in loads if ld.module}
    names |= {m for q, _ in requests for m in led_to(q)}
    if flt.module is not None:
        names &= {flt.module}
    rows = {k: r for k, r in report.by_module.items() if k in names}
    unnamed = report.unnamed if any(not ld.module for ld, _ in loads) else None
    keys = {q.name for q, _ in requests} | {q.display_name for q, _ in requests}
    keys |= {""} if unnamed is not None else set()
    lo = report.loading
    busy = None if lo.busy_ns is None else bymodule.busy_ns(
        ld for ld, _ in report.loads if ld.module in rows or (unnamed and not ld.module))
    return replace(
        report, requests=requests, loads=loads, by_module=rows, unnamed=unnamed,
        modules={k: m for k, m in report.modules.items()
                 if k in keys or (k and kmod_name(k) in rows)},
        loading=loading(rows, busy, lo.tracer_attached_ns, lo.traced_from_ns,
                        lo.traced_to_ns, unnamed),
        narrowed=Narrowed(flt, len(report.requests), len(report.loads),
                          len(report.by_module)))


def replay_file(path: str, announce: str | None = None,
                keep_events: bool = True) -> tuple[Trace, Replay]:
    """Read the trace in PATH and replay it through the model (with the dups.c announce
    form ANNOUNCE over the recorded one, if given); TraceFormatError if it is not a trace.
    Without KEEP_EVENTS, the replay consumes trace.events (left empty; the Report counts
    them from the replay): each event is freed once fed."""
    trace = read_trace(path)
    if announce is not None:
        trace.header["features"] = trace.features.with_announce(
            announce_form(announce)).to_dict()
    return trace, replay(trace.events, trace.features.profile, modaliases=trace.modaliases,
                         hooks=listed_hooks(trace.header), consume=not keep_events)


def read(path: str, announce: str | None = None) -> Report:
    """The Report of the trace in PATH; TraceFormatError if it is not a trace."""
    return build(*replay_file(path, announce, keep_events=False))
