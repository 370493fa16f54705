"""The seam between the kernel's boot-time trace and the tracer's own events: each event is
kept once (tracer/early.py keep_once), and tracefs lines become the Events BPF would send."""

from __future__ import annotations

from tracer import early
from tracer.events import Event, Kind

MS = 1_000_000


def ev(kind: Kind, tid: int, ts: int) -> Event:
    return Event(ts_ns=ts, kind=kind, pid=tid, tid=tid)


def test_before_the_window_kept_after_it_dropped() -> None:
    begin, end = 100 * MS, 200 * MS
    earl = [ev(Kind.FINIT_ENTER, 1, 50 * MS), ev(Kind.FINIT_EXIT, 1, 99 * MS),
            ev(Kind.FINIT_ENTER, 2, 250 * MS)]
    kept, both, after = early.keep_once(earl, [], begin, end)
    assert [e.ts_ns for e in kept] == [50 * MS, 99 * MS] and both == 0 and after == 1


def test_in_the_window_kept_only_when_bpf_missed_it() -> None:
    begin, end = 100 * MS, 200 * MS
    earl = [ev(Kind.REQ_TP, 7, 150 * MS),  # BPF saw it too: 0.1 ms apart
            ev(Kind.REQ_TP, 8, 150 * MS),  # another thread: BPF's probe was not yet on
            ev(Kind.MOD_LOAD, 7, 160 * MS)]  # BPF saw the same thread's other kind only
    bpf = [ev(Kind.REQ_TP, 7, 150 * MS + 100_000), ev(Kind.REQ_EXIT, 7, 160 * MS)]
    kept, both, after = early.keep_once(earl, bpf, begin, end)
    assert [(e.kind, e.tid) for e in kept] == [(Kind.REQ_TP, 8), (Kind.MOD_LOAD, 7)]
    assert both == 1 and after == 0


def test_one_bpf_event_answers_for_one_early_event() -> None:
    """Two requests by one thread 1 ms apart, BPF attached between them: it saw the second
    only, so the first stays."""
    begin, end = 100 * MS, 200 * MS
    earl = [ev(Kind.REQ_TP, 3, 150 * MS), ev(Kind.REQ_TP, 3, 151 * MS)]
    bpf = [ev(Kind.REQ_TP, 3, 151 * MS + 50_000)]
    kept, both, _ = early.keep_once(earl, bpf, begin, end)
    assert len(kept) == 1 and both == 1


def test_far_apart_is_not_the_same_event() -> None:
    begin, end = 100 * MS, 200 * MS
    earl = [ev(Kind.REQ_TP, 3, 120 * MS)]
    bpf = [ev(Kind.REQ_TP, 3, 120 * MS + early.MATCH_NS + 1)]
    kept, both, _ = early.keep_once(earl, bpf, begin, end)
    assert len(kept) == 1 and both == 0


def test_summary_states_the_gap() -> None:
    assert "not in this trace" in early.summary(None)
    gap = {"attach_end_ns": 97 * 10**9, "events": 0, "gap": "no boot-time tracing"}
    assert early.summary(gap) == "before 97.00 s: no boot-time tracing"
    full = {"attach_end_ns": 97 * 10**9, "events": 40, "seen_by_both": 2, "overrun": 5,
            "gap": "the kernel's buffer overwrote 5 of its oldest events"}
    line = early.summary(full)
    assert line.startswith("40 events from the kernel's boot-time trace")
    assert "overwrote 5" in line
    assert early.traced_from_ns({**full, "clock_offset_ns": 0, "first_ns": 3, "probes": ["x"]},
                                9) == 3
    assert early.traced_from_ns({"probes": ["x"], "clock_offset_ns": 0, "overrun": 0}, 9) == 0
