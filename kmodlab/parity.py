"""Parity of the model with the kernel's own dups.c and MODULE_STATS (the oracle kernel).

Per request: the model's verdict (duplicate or not) and the value a duplicate returns,
against what kmod_dup_request_exists_wait() decided and wrote to *dup_ret. Per run: the
model's MODULE_STATS figures against the difference of /sys/kernel/debug/modules/stats
before and after the storms, every counter and the duplicate-failed table with its
reasons. Per run too: which requests passed the kmod throttle (kmod_concurrent_max, run
by the model from the traced entries and returns) against which reached the tracepoint.
Every mismatch is printed with the events around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kmodlab.semaphore import semaphore
from tracer.events import Event, Kind
from tracer.model import StatsSummary
from tracer.model.throttle import ALL_BUSY_TIMEOUT_NS
from tracer.session import Replay
from tracer.stories import Request


@dataclass(slots=True)
class ModuleStatsFile:
    counters: dict[str, int] = field(default_factory=dict)
    dup_failed: dict[str, tuple[int, str]] = field(default_factory=dict)


def parse_stats(text: str) -> ModuleStatsFile:
    """Parse kernel/module/stats.c's read_file_mod_stats() output."""
    out = ModuleStatsFile()
    in_table = False
    for line in text.splitlines():
        if line.startswith("Duplicate failed modules:"):
            in_table = True
            continue
        parts = [p.strip() for p in line.split("\t") if p.strip()]
        if in_table:
            if len(parts) >= 3 and parts[1].isdigit():
                out.dup_failed[parts[0]] = (int(parts[1]), parts[2])
        elif len(parts) == 2 and re.fullmatch(r"\d+", parts[1]):
            out.counters[parts[0]] = int(parts[1])
    return out


@dataclass(slots=True)
class Mismatch:
    what: str
    detail: str
    context: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Parity:
    requests_checked: int = 0
    requests_agree: int = 0
    # of requests_agree: anchors swapped by the kernel's order (model.dups.unordered())
    ties: int = 0
    tail_boundary: int = 0  # of requests_agree: entry still alive in the timer's slack
    stats_checked: int = 0
    stats_agree: int = 0
    throttle_checked: int = 0
    throttle_agree: int = 0
    throttle_queued: int = 0  # of throttle_agree: slept for a slot (the model's view)
    throttle_timed_out: int = 0  # of throttle_agree: -ETIME
    throttle_ties: int = 0  # of throttle_agree: reached down_timeout() in an unknown order
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.requests_checked > 0


def _context(events: list[Event], ts: int, window_ns: int = 2_000_000) -> list[str]:
    near = [e for e in events if abs(e.ts_ns - ts) <= window_ns][:12]
    return [f"{e.ts_ns} {e.kind_name} pid={e.pid} tid={e.tid} name={e.name!r} ret={e.ret}"
            for e in near]


def check_requests(rep: Replay, events: list[Event], par: Parity) -> None:
    # call_modprobe() announces on every path, so with the announce hooked every request
    # the kernel did not call a duplicate announced, and no duplicate did.
    announces = any(e.kind == Kind.DUP_ANNOUNCE for e in events)
    for req, v in rep.requests:
        if req.kernel_dup is None or req.tp_ns is None:
            continue  # rejected before the dups check, or not traced by the kernel
        par.requests_checked += 1
        model_dup = v is not None and v.verdict == "duplicate"
        problems = []
        if model_dup != req.kernel_dup:
            problems.append(f"model says {v.verdict if v else None}, kernel says "
                            f"{'duplicate' if req.kernel_dup else 'not a duplicate'}")
        elif model_dup and v is not None and v.predicted_ret != req.kernel_dup_ret:
            problems.append(f"model predicts ret {v.predicted_ret}, kernel returned "
                            f"{req.kernel_dup_ret}")
        announced = req.kernel_announce_ns is not None
        if announces and announced == model_dup:
            problems.append(f"model {'does not announce' if model_dup else 'announces'}, "
                            f"kernel {'announced' if announced else 'did not announce'}")
        # Count where the kernel's answer differed from the model's default guess: a
        # late request first by the tracepoint order, an expired entry past the tail.
        if not problems and v is not None and v.decided_by_kernel:
            if v.indeterminate == "tie":
                par.ties += 1
            else:
                par.tail_boundary += 1
        if problems:
            par.mismatches.append(Mismatch(
                f"request #{req.id} {req.name} (pid {req.pid}, {'wait' if req.wait else 'nowait'})",
                "; ".join(problems), _context(events, req.tp_ns)))
        else:
            par.requests_agree += 1


def down_window(req: Request) -> tuple[int, int]:
    """When REQ can have called down_timeout(): after its __request_module kprobe, and
    before its tracepoint if it got a slot, or 5 s before its -ETIME return if not. The
    model takes the kprobe's time; a preempted thread can get there much later."""
    if req.tp_ns is not None:
        return req.start_ns, req.tp_ns
    if req.end_ns is not None:
        return req.start_ns, max(req.start_ns, req.end_ns - ALL_BUSY_TIMEOUT_NS)
    return req.start_ns, req.start_ns


def check_throttle(requests: list[Request], events: list[Event], par: Parity) -> None:
    """The model's kmod_concurrent_max against the kernel's: a request passed if it reached
    the tracepoint (after down_timeout()); one that did not returned -ETIME.

    Two requests the model and the kernel swapped (one passed where the other timed out)
    whose down_timeout() windows overlap reached the semaphore in an order the trace
    cannot show: a tie the kernel settled, counted as such (seen with a CPU hog on the
    host: a request preempted for 14 ms between its kprobe and down_timeout())."""
    fates = semaphore(requests)
    wrong: list[tuple[Request, bool]] = []  # (request, what the model said: passed?)
    for req in requests:
        fate = fates.get(req.id)
        if fate is None:
            continue  # stopped before the semaphore
        par.throttle_checked += 1
        if fate.passed == (req.tp_ns is not None):
            par.throttle_agree += 1
            par.throttle_queued += fate.queued
            par.throttle_timed_out += not fate.passed
        else:
            wrong.append((req, fate.passed))
    for req, passed in _untied(wrong, par):
        fate = fates[req.id]
        par.mismatches.append(Mismatch(
            f"throttle: request #{req.id} {req.display_name} (pid {req.pid})",
            f"model says {'passed' if passed else 'timed out'}"
            f"{' after queueing' if fate.queued else ''}, kernel "
            f"{'passed' if req.tp_ns is not None else f'returned {req.ret}'}",
            _context(events, req.start_ns)))


def _untied(wrong: list[tuple[Request, bool]], par: Parity) -> list[tuple[Request, bool]]:
    """WRONG less the swapped pairs whose down_timeout() windows overlap (each pair
    counted in par.throttle_ties and as agreeing)."""
    left = list(wrong)
    for req, passed in wrong:
        if (req, passed) not in left or not passed:
            continue
        lo, hi = down_window(req)
        for other in left:
            o_lo, o_hi = down_window(other[0])
            if not other[1] and o_lo <= hi and lo <= o_hi:
                left.remove((req, passed))
                left.remove(other)
                par.throttle_ties += 2
                par.throttle_agree += 2
                break
    return left


# mod_fail_to_str(): the reasons of a "Duplicate failed modules" line
_REASONS = {"Becoming": {"Becoming"}, "Load": {"Load"}, "Becoming & Load": {"Becoming", "Load"}}


def check_stats(model: StatsSummary, before: ModuleStatsFile, after: ModuleStatsFile,
                par: Parity) -> None:
    def delta(key: str) -> int:
        return after.counters.get(key, 0) - before.counters.get(key, 0)

    pairs = [  # read_file_mod_stats() labels
        ("Virtual mem wasted bytes", model.wasted_bytes),
        ("Failed kread bytes", model.invalid_kread_bytes),
        ("Failed decompress bytes", model.invalid_decompress_bytes),
        ("Failed becoming bytes", model.invalid_becoming_bytes),
        ("Failed kmod bytes", model.invalid_mod_bytes),
        ("Mods failed on kread", model.failed_kreads),
        ("Mods failed on decompress", model.failed_decompress),
        ("Mods failed on becoming", model.failed_becoming),
        ("Mods failed on load", model.failed_load),
    ]
    for key, ours in pairs:
        par.stats_checked += 1
        if delta(key) == ours:
            par.stats_agree += 1
        else:
            par.mismatches.append(Mismatch(f"MODULE_STATS {key}",
                                           f"model {ours}, kernel {delta(key)}"))
    names = set(model.dup_failed) | set(after.dup_failed)
    for name in sorted(names):
        b_n, b_reason = before.dup_failed.get(name, (0, ""))
        a_n, a_reason = after.dup_failed.get(name, (0, ""))
        ours_row = model.dup_failed.get(name)
        ours_n = ours_row.count if ours_row else 0
        # the kernel's reasons accumulate since boot: before's and this run's
        ours_reasons = _REASONS.get(b_reason, set()) | _REASONS.get(
            ours_row.reason if ours_row else "", set())
        par.stats_checked += 1
        if a_n - b_n == ours_n and ours_reasons == _REASONS.get(a_reason, set()):
            par.stats_agree += 1
        else:
            ours_text = " & ".join(r for r in ("Becoming", "Load") if r in ours_reasons)
            par.mismatches.append(Mismatch(
                f"duplicate failed module {name}",
                f"model {ours_n} ({ours_text or '-'}), kernel {a_n - b_n} ({a_reason or '-'})"))


def render(par: Parity) -> list[str]:
    lines = [f"requests: {par.requests_agree} of {par.requests_checked} verdicts and return "
             f"values agree with the kernel's dups.c",
             f"  of which decided by the kernel where the trace cannot order events: "
             f"{par.ties} arrival ties (inside an earlier one's dups.c window), "
             f"{par.tail_boundary} inside the delete timer's slack after the 60 s tail",
             f"MODULE_STATS: {par.stats_agree} of {par.stats_checked} figures agree",
             f"throttle: {par.throttle_agree} of {par.throttle_checked} requests passed or "
             f"timed out as the model's kmod_concurrent_max says ({par.throttle_queued} "
             f"queued for a slot, {par.throttle_timed_out} timed out, "
             f"{par.throttle_ties} in swapped pairs that reached it in an order the trace "
             f"cannot show)"]
    for m in par.mismatches:
        lines.append(f"MISMATCH {m.what}: {m.detail}")
        lines += [f"    {c}" for c in m.context]
    lines.append("PARITY " + ("OK" if par.ok else "FAILED"))
    return lines


def run(outdir: Path, announce: str | None = None) -> Parity:
    """Parity of one oracle run's results directory (trace.jsonl, stats-*.txt); with
    ANNOUNCE, the model runs that dups.c form instead of the one the trace says."""
    from tracer.kernel import announce_form
    from tracer.record import read_trace
    from tracer.session import listed_hooks, replay

    trace = read_trace(str(outdir / "trace.jsonl"))
    features = trace.features
    if announce is not None:
        features = features.with_announce(announce_form(announce))
    par = Parity()
    if not features.dups:
        par.mismatches.append(Mismatch("kernel", f"{features.release} has no dups.c: "
                                       "not an oracle kernel"))
        return par
    # A first pass collects the kernel's verdicts so that the model can consult them
    # where the trace cannot order two events (see Model.oracle); it decides alone
    # everywhere else.
    hooks = listed_hooks(trace.header)  # arrivals ordered as `live` ordered them
    first = replay(trace.events, features.profile, hooks=hooks)
    kernel = {(r.tid, r.tp_ns): r.kernel_dup for r, _ in first.requests}
    rep = replay(trace.events, features.profile,
                 oracle=lambda req: kernel.get((req.tid, req.tp_ns)), hooks=hooks)
    check_requests(rep, trace.events, par)
    check_throttle([r for r, _ in rep.requests], trace.events, par)
    before, after = outdir / "stats-before.txt", outdir / "stats-after.txt"
    if before.exists() and after.exists():
        check_stats(rep.judge.model.stats(), parse_stats(before.read_text()),
                    parse_stats(after.read_text()), par)
    else:
        par.mismatches.append(Mismatch("MODULE_STATS", "no stats files: CONFIG_MODULE_STATS "
                                       "or debugfs missing"))
    return par
