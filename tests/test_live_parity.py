"""`live` and a replay of the trace it recorded give every request the same verdict: the
Judge and Correlator that tracer.live.Run builds, fed in the order Run releases events,
against session.replay over the trace file, under a storm whose order at the tracepoint
and at kmod_dup_mutex (the DUP_ENTER kprobe) differ."""

from __future__ import annotations

import random
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from tracer.events import Event, Kind
from tracer.kernel import Features
from tracer.ksyms import KernelSymbols
from tracer.live import REORDER_NS, Reorder, Run
from tracer.model import RequestVerdict
from tracer.options import Options
from tracer.probes import DUP_ENTER_HOOK, HOOKS, Attached, Tracer
from tracer.record import TraceWriter, read_trace
from tracer.session import listed_hooks, replay
from tracer.stories import Request

US, MS = 1_000, 1_000_000
Stories = list[tuple[Request, RequestVerdict | None]]
# A kernel with dups.c: every dups hook attached, the one the arrivals are ordered by too
FEATURES = Features(release="6.12.0-oracle", dups=True, dups_deferred=True, idempotent=True,
                    patient=True, module_stats=True)


@dataclass(frozen=True, slots=True)
class Call:
    """One request_module() call of the storm, as the kernel ran it."""

    tid: int
    name: str
    wait: bool
    tp: int  # module:module_request
    enter: int  # kmod_dup_request_exists_wait() entry: the order at kmod_dup_mutex


def _storm(seed: int, n: int = 120) -> list[Event]:
    """N requests for four names, each from its own kernel thread; one in five preempted
    for up to 900 us between the tracepoint and dups.c, so that later tracepoints often
    reach kmod_dup_mutex first, and some enter inside an earlier one's dups.c window (a
    tie, judged before that window's end is seen). The kernel's verdicts and return times
    follow dups.c in the DUP_ENTER order: the first wait request per name anchors an entry
    and returns after its modprobe (8 ms), whose announce wakes the waiters; a nowait
    request with no entry is untracked."""
    rng = random.Random(seed)
    t0 = 1_000 * MS
    calls = []
    for i in range(n):
        tp = t0 + i * 40 * US + rng.randrange(30 * US)
        delay = rng.randrange(300 * US, 900 * US) if rng.random() < 0.2 else rng.randrange(
            1 * US, 5 * US)
        calls.append(Call(100 + i, f"n{rng.randrange(4)}", rng.random() < 0.8, tp, tp + delay))
    # two calls of the brief's shape first: tracepoints 515 us apart, mutex the other way
    calls += [Call(10, "x", True, t0, t0 + 1_200 * US),
              Call(11, "x", True, t0 + 515 * US, t0 + 600 * US)]
    def window() -> int:
        """How long a request that finds no entry stays in dups.c: 15 us, or up to 700
        where kzalloc or the mutex made it sleep. Later requests entering meanwhile are
        ties: the trace cannot order them."""
        return 15 * US if rng.random() < 0.6 else rng.randrange(100 * US, 700 * US)

    evs: list[Event] = []
    anchors: dict[str, int] = {}  # name -> when its first request announced
    for c in sorted(calls, key=lambda c: c.enter):
        def ev(ts: int, kind: Kind, c: Call = c, **kw: Any) -> Event:
            # a kernel thread's (ppid 2): no /proc to read
            return Event(ts_ns=ts, kind=kind, pid=c.tid, tid=c.tid, ppid=2, comm="kworker",
                         **kw)

        evs += [ev(c.tp - 5 * US, Kind.REQ_ENTER, wait=int(c.wait), ip=0xff01),
                ev(c.tp, Kind.REQ_TP, wait=int(c.wait), name=c.name),
                ev(c.enter, Kind.DUP_ENTER)]
        done = anchors.get(c.name)
        if done is None and c.wait:  # the anchor: verdict at once, modprobe, announce
            end = c.enter + 8 * MS
            anchors[c.name] = end - 10 * US
            evs += [ev(c.enter + window(), Kind.DUP_VERDICT, wait=0),
                    ev(end - 10 * US, Kind.DUP_ANNOUNCE, name=c.name),
                    ev(end, Kind.REQ_EXIT)]
        elif done is None:  # nowait, no entry: untracked, runs modprobe, announces
            end = c.enter + 3 * MS
            evs += [ev(c.enter + window(), Kind.DUP_VERDICT, wait=0),
                    ev(end - 10 * US, Kind.DUP_ANNOUNCE, name=c.name),
                    ev(end, Kind.REQ_EXIT)]
        else:  # duplicate: nowait back at once, wait asleep until the announce
            back = c.enter + 10 * US if not c.wait else max(done, c.enter) + 10 * US
            evs += [ev(back, Kind.DUP_VERDICT, wait=1), ev(back + 5 * US, Kind.REQ_EXIT)]
    return evs


# request id -> (verdict, predicted_ret) as the last _live() run printed them
printed: dict[int, tuple[object, ...] | None] = {}


def _live(evs: list[Event], trace: Path, seed: int) -> tuple[Run, Stories]:
    """Run as start() builds it (its Judge and Correlator), recording to TRACE, handed EVS
    as the ring buffer would (CPUs up to 2 ms out of order) and released as its pump
    does: batch by batch, each as far as the reorder window allows, then the rest."""
    rng = random.Random(seed)
    tracer = Tracer(lambda ev: None, notice=lambda m: None)  # no bcc: nothing attached
    attached = Attached(hooks=list(HOOKS), skipped=[], features=FEATURES, attach_s=0.0,
                        build="btf", phases={})
    run = Run(Options(quiet=True, early=False), tracer, attached, Reorder(),
              TraceWriter(str(trace)), StringIO(), StringIO())
    run.kallsyms = KernelSymbols(str(trace) + ".none", str(trace) + ".none")  # not the host's
    shown: Stories = []
    printed.clear()
    show = run.judge.on_request
    assert show is not None

    def on_request(req: Request, v: RequestVerdict | None) -> None:
        shown.append((req, v))
        # what live printed then (the model may fill the verdict in later)
        printed[req.id] = None if v is None else (v.verdict, v.predicted_ret)
        show(req, v)

    run.judge.on_request = on_request
    ring = sorted(evs, key=lambda e: e.ts_ns + rng.randrange(2 * MS))
    for i in range(0, len(ring), 37):
        for ev in ring[i:i + 37]:
            run.reorder.push(ev)
        run._release(run.reorder.newest_ns - REORDER_NS - 1)
    run._release(None)
    run.judge.flush()
    assert run.writer is not None
    run.writer.close({})
    return run, shown


def _verdicts(stories: Stories) -> dict[tuple[int, int | None], tuple[object, ...]]:
    return {(r.tid, r.tp_ns): (None,) if v is None else
            (v.verdict, v.predicted_ret, v.indeterminate, v.anchor_id) for r, v in stories}


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_live_and_replay_of_its_trace_agree(tmp_path: Path, seed: int) -> None:
    evs = _storm(seed)
    run, live = _live(evs, tmp_path / "t.jsonl", seed)
    trace = read_trace(str(tmp_path / "t.jsonl"))
    assert DUP_ENTER_HOOK.name in (listed_hooks(trace.header) or [])
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    assert len(live) == len(rep.requests) == 122
    assert _verdicts(live) == _verdicts(rep.requests)
    assert {r.id: printed[r.id] for r, _ in live} == {
        r.id: None if v is None else (v.verdict, v.predicted_ret) for r, v in rep.requests}
    assert run.judge.model.modules() == rep.judge.model.modules()
    assert sum(v.indeterminate == "tie" for _, v in live if v is not None) >= 2
    # and both are right: the kernel's order at kmod_dup_mutex, not the tracepoints'
    got = {r.tid: v.verdict for r, v in live if v is not None}
    assert (got[10], got[11]) == ("duplicate", "first")
    assert all((v.verdict == "duplicate") == r.kernel_dup for r, v in live if v is not None)


def test_a_header_that_lists_the_hook_orders_the_replay_as_live_did(tmp_path: Path) -> None:
    """Every DUP_ENTER lost (the ring buffer overran), the hook attached all the same:
    live waited for arrivals that never came and judged each request at its return. The
    replay takes the order from the header's hooks, not from the events it happens to
    hold."""
    evs = [e for e in _storm(5) if e.kind != Kind.DUP_ENTER]
    run, live = _live(evs, tmp_path / "t.jsonl", 5)
    trace = read_trace(str(tmp_path / "t.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    assert _verdicts(live) == _verdicts(rep.requests)
    assert run.judge.model.modules() == rep.judge.model.modules()


def test_a_duplicate_back_before_its_anchor_is_shown_with_its_prediction(
        tmp_path: Path) -> None:
    """The oracle's kmod.sh storm, inside a cached entry's 60 s tail that the model had
    let expire: the kernel answered both requests at once from the cache, and the one the
    model calls a duplicate returned 200 ns before the one it anchored on. Live holds its
    story until that announce, so it shows the prediction the replay shows."""
    def ev(ts: int, kind: Kind, tid: int, **kw: Any) -> Event:
        return Event(ts_ns=ts, kind=kind, pid=tid, tid=tid, ppid=2, comm="test_kmod-0", **kw)

    t = 1_000 * MS
    evs = [ev(t, Kind.REQ_ENTER, 1, wait=1, ip=0xff01),
           ev(t + 77 * US, Kind.REQ_TP, 1, wait=1, name="test_module"),
           ev(t + 96 * US, Kind.DUP_ENTER, 1),
           ev(t + 106 * US, Kind.REQ_ENTER, 2, wait=1, ip=0xff01),
           ev(t + 135 * US, Kind.REQ_TP, 2, wait=1, name="test_module"),
           ev(t + 145 * US, Kind.DUP_ENTER, 2),
           ev(t + 172 * US, Kind.DUP_VERDICT, 1, wait=1),
           ev(t + 177 * US, Kind.DUP_VERDICT, 2, wait=1),
           ev(t + 202_300, Kind.REQ_EXIT, 2),
           ev(t + 202_500, Kind.REQ_EXIT, 1)]
    _, live = _live(evs, tmp_path / "t.jsonl", 1)
    trace = read_trace(str(tmp_path / "t.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    assert {r.tid: printed[r.id] for r, _ in live} == {1: ("first", 0), 2: ("duplicate", 0)}
    assert _verdicts(live) == _verdicts(rep.requests)
