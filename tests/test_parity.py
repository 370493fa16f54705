"""Parity machinery: the MODULE_STATS parser and the per-request comparison."""

from __future__ import annotations

from kmodlab.parity import Parity, check_requests, check_stats, parse_stats, render
from tracer.events import Event, Kind
from tracer.model import DUP_TAIL_NS, PROFILE_6_5, TIE_NS, Model, profile_with_dups
from tracer.session import replay
from tracer.stories import Request

# The layout kernel/module/stats.c's read_file_mod_stats() prints ("%25s\t%u\n" ...).
STATS = "".join(f"{k:>25}\t{v}\n" for k, v in [
    ("Mods ever loaded", 66), ("Mods failed on kread", 0), ("Mods failed on decompress", 0),
    ("Mods failed on becoming", 7), ("Mods failed on load", 0), ("Total module size", 1),
    ("Total mod text size", 2), ("Failed kread bytes", 0), ("Failed decompress bytes", 0),
    ("Failed becoming bytes", 700), ("Failed kmod bytes", 0),
    ("Virtual mem wasted bytes", 700)]) + "Duplicate failed modules:\n" + \
    f"{'Module-name':>25}\t{'How-many-times':>15}\t{'Reason':>25}\n" + \
    f"{'xfs':>25}\t{7:>15}\t{'Becoming':>25}\n"


def test_parse_stats() -> None:
    st = parse_stats(STATS)
    assert st.counters["Virtual mem wasted bytes"] == 700
    assert st.counters["Mods failed on becoming"] == 7
    assert st.dup_failed == {"xfs": (7, "Becoming")}


def _storm(n: int, dup_rets: list[int | None],
           announcers: set[int] | None = None) -> list[Event]:
    """N wait requests for one name; the kernel's verdicts as dup_rets (None: not a dup).
    With announcers, the requests (by index) whose kmod_dup_request_announce() was traced."""
    evs: list[Event] = []
    for i in range(n):
        t = 1000 + i
        ret = 256 if dup_rets[i] is None else dup_rets[i] or 0
        evs += [Event(ts_ns=t, kind=Kind.REQ_ENTER, pid=i + 1, tid=i + 1, wait=1),
                Event(ts_ns=t + 1, kind=Kind.REQ_TP, pid=i + 1, tid=i + 1, wait=1, name="x"),
                Event(ts_ns=t + 2, kind=Kind.DUP_VERDICT, pid=i + 1, tid=i + 1,
                      wait=int(dup_rets[i] is not None), ret=dup_rets[i] or 0),
                Event(ts_ns=10_000 + i, kind=Kind.REQ_EXIT, pid=i + 1, tid=i + 1, ret=ret)]
        if announcers is not None and i in announcers:
            evs.append(Event(ts_ns=9_000 + i, kind=Kind.DUP_ANNOUNCE, pid=i + 1, tid=i + 1,
                             name="x", ret=ret))
    return evs


def test_agreeing_storm_is_n_of_n() -> None:
    evs = _storm(4, [None, 256, 256, 256])
    par = Parity()
    check_requests(replay(evs, profile_with_dups(PROFILE_6_5)), evs, par)
    assert (par.requests_checked, par.requests_agree, par.mismatches) == (4, 4, [])
    assert render(par)[0].startswith("requests: 4 of 4")


def test_a_wrong_verdict_is_reported_with_context() -> None:
    evs = _storm(3, [None, None, 256])  # the kernel calls #2 a first: the model cannot
    par = Parity()
    check_requests(replay(evs, profile_with_dups(PROFILE_6_5)), evs, par)
    assert par.requests_agree == 2 and len(par.mismatches) == 1
    assert "kernel says not a duplicate" in par.mismatches[0].detail
    assert par.mismatches[0].context and not par.ok


def test_a_wrong_return_value_is_reported() -> None:
    evs = _storm(2, [None, 0])  # kernel hands the duplicate 0, the anchor returned 256
    par = Parity()
    check_requests(replay(evs, profile_with_dups(PROFILE_6_5)), evs, par)
    assert "model predicts ret 256, kernel returned 0" in par.mismatches[0].detail


def test_stats_differences() -> None:
    from tracer.model import StatsSummary

    before = parse_stats(STATS.replace("\t7\n", "\t0\n").replace("700", "0")
                         .replace(f"{7:>15}", f"{0:>15}"))
    after = parse_stats(STATS)
    ours = StatsSummary(invalid_kread_bytes=0, invalid_decompress_bytes=0,
                        invalid_becoming_bytes=700, invalid_mod_bytes=0, failed_kreads=0,
                        failed_decompress=0, failed_becoming=7, failed_load=0, dup_failed={},
                        bytes_saved_idempotent=0, modelled=False)
    par = Parity()
    check_stats(ours, before, after, par)
    # nine read_file_mod_stats() figures, the four byte counters apart, and one table row
    assert par.stats_checked == 10 and par.stats_agree == 9
    assert par.mismatches[0].what == "duplicate failed module xfs"


# Where the trace cannot order events, the model marks the verdict and, with an
# oracle (the kernel's own verdict), follows the kernel. Nowhere else is it consulted.

def _req(rid: int, tp: int, end: int, ret: int, wait: bool = True) -> Request:
    return Request(pid=rid, tid=rid, comm="t", ppid=1, wait=wait, start_ns=tp - 10,
                   name="x", tp_ns=tp, end_ns=end, ret=ret, id=rid)


def _never(req: Request) -> bool | None:
    raise AssertionError(f"oracle consulted for request {req.id}")


def test_tie_follows_the_kernels_order() -> None:
    a, b = _req(1, 1_000_000, 9_000_000, 256), _req(2, 1_050_000, 9_500_000, 0)
    m = Model(PROFILE_6_5, oracle=lambda r: {1: True, 2: False}[r.id])
    va, vb = m.request_arrive(a), m.request_arrive(b)
    assert (vb.verdict, vb.indeterminate) == ("first", "tie")
    assert (va.verdict, va.anchor_id, va.indeterminate) == ("duplicate", 2, "tie")
    m.request_done(b)
    assert va.predicted_ret == 0  # the kernel's anchor returned 0
    assert m.modules()["x"].duplicates == 1 and m.modules()["x"].firsts == 1


def test_tie_without_an_oracle_keeps_the_tracepoint_order() -> None:
    a, b = _req(1, 1_000_000, 9_000_000, 256), _req(2, 1_050_000, 9_500_000, 0)
    m = Model(PROFILE_6_5)
    va, vb = m.request_arrive(a), m.request_arrive(b)
    assert (va.verdict, vb.verdict, vb.indeterminate) == ("first", "duplicate", "tie")


def test_no_tie_beyond_tie_ns() -> None:
    m = Model(PROFILE_6_5, oracle=_never)
    m.request_arrive(_req(1, 1_000_000, 9_000_000, 0))
    vb = m.request_arrive(_req(2, 1_000_000 + TIE_NS, 9_500_000, 0))
    assert (vb.verdict, vb.indeterminate) == ("duplicate", None)


def _win(rid: int, enter: int, verdict: int, end: int, ret: int,
         wait: bool = True) -> Request:
    """A request whose kmod_dup_request_exists_wait() ran over [ENTER, VERDICT]."""
    req = _req(rid, enter - 5_000, end, ret, wait)
    req.dup_enter_ns, req.dup_verdict_ns = enter, verdict
    return req


def test_overlapping_windows_are_a_tie_the_kernel_decides() -> None:
    """#1 entered dups.c first but was preempted before kmod_dup_mutex; #2 entered 400 us
    later (no tie by TIE_NS), took the mutex and anchored the entry, and #1 slept on it
    until #2's announce. Only the kernel can say so: #2 entered inside #1's window."""
    a = _win(1, 1_000_000, 9_600_000, 9_700_000, 0)
    b = _win(2, 1_400_000, 1_420_000, 9_500_000, 0)
    assert b.dup_enter_ns is not None and b.dup_enter_ns - 1_000_000 > TIE_NS
    m = Model(PROFILE_6_5, oracle=lambda r: {1: True, 2: False}[r.id])
    va, vb = m.request_arrive(a), m.request_arrive(b)
    assert (vb.verdict, vb.indeterminate, vb.decided_by_kernel) == ("first", "tie", True)
    assert (va.verdict, va.anchor_id, va.indeterminate) == ("duplicate", 2, "tie")
    m.request_done(b)
    assert va.predicted_ret == 0
    # without the oracle: the DUP_ENTER order stands, marked as the kernel's to decide
    m = Model(PROFILE_6_5)
    va, vb = m.request_arrive(_win(1, 1_000_000, 9_600_000, 9_700_000, 0)), m.request_arrive(
        _win(2, 1_400_000, 1_420_000, 9_500_000, 0))
    assert (va.verdict, vb.verdict, vb.indeterminate, vb.decided_by_kernel) == (
        "first", "duplicate", "tie", False)


def test_windows_that_do_not_overlap_are_ordered_however_close() -> None:
    """#1 returned from dups.c before #2 entered it: #1 took the mutex first, whether #2
    came 400 us or 30 us (closer than TIE_NS) later. The kernel is not asked."""
    for later in (400_000, 30_000):
        m = Model(PROFILE_6_5, oracle=_never)
        va = m.request_arrive(_win(1, 1_000_000, 1_020_000, 9_000_000, 0))
        vb = m.request_arrive(_win(2, 1_000_000 + later, 9_100_000, 9_200_000, 0))
        assert (va.verdict, vb.verdict, vb.anchor_id, vb.indeterminate) == (
            "first", "duplicate", 1, None), later


def test_a_wait_request_inside_an_untracked_nowaits_window_is_a_tie() -> None:
    """A nowait request found no entry by the trace's order, but the wait request that
    anchors one entered dups.c 500 us later, before the nowait one returned from it: the
    kernel says the nowait came second, a duplicate returning 0 without modprobe."""
    nw = _win(1, 1_000_000, 1_600_000, 1_700_000, 0, wait=False)
    w = _win(2, 1_500_000, 1_520_000, 9_000_000, 0)
    m = Model(PROFILE_6_5, oracle=lambda r: {1: True, 2: False}[r.id])
    vn, vw = m.request_arrive(nw), m.request_arrive(w)
    assert vw.verdict == "first"
    assert (vn.verdict, vn.anchor_id, vn.indeterminate, vn.decided_by_kernel) == (
        "duplicate", 2, "tie", True)
    # the nowait one had returned before: no tie, the kernel is not asked
    m = Model(PROFILE_6_5, oracle=_never)
    vn = m.request_arrive(_win(1, 1_000_000, 1_020_000, 1_100_000, 0, wait=False))
    m.request_arrive(_win(2, 1_500_000, 1_520_000, 9_000_000, 0))
    assert (vn.verdict, vn.indeterminate) == ("untracked", None)


def test_tail_boundary_is_the_kernels_call() -> None:
    a = _req(1, 1_000, 2_000_000, 0)
    late = DUP_TAIL_NS + 2_000_000 + 500_000_000  # 0.5 s into the delete timer's slack
    for kernel_says, verdict in ((True, "duplicate"), (False, "first"), (None, "first")):
        m = Model(PROFILE_6_5, oracle=lambda r, k=kernel_says: k)  # type: ignore[misc]
        m.request_arrive(a)
        m.request_done(a)
        v = m.request_arrive(_req(2, late, late + 10, 0))
        assert (v.verdict, v.indeterminate) == (verdict, "tail-boundary"), kernel_says


def test_past_the_slack_the_entry_is_gone_without_asking() -> None:
    a = _req(1, 1_000, 2_000_000, 0)
    m = Model(PROFILE_6_5, oracle=_never)
    m.request_arrive(a)
    m.request_done(a)
    late = 2_000_000 + DUP_TAIL_NS + DUP_TAIL_NS // 8
    v = m.request_arrive(_req(2, late, late + 10, 0))
    assert (v.verdict, v.indeterminate) == ("first", None)
    m.expire(late + 2 * DUP_TAIL_NS)
    m.request_done(_req(2, late, late + 10, 0))


def test_nowait_just_before_an_anchor_may_be_its_duplicate() -> None:
    nw = _req(1, 1_000_000, 1_100_000, 0, wait=False)
    anchor = _req(2, 1_020_000, 9_000_000, 0)
    m = Model(PROFILE_6_5, oracle=lambda r: {1: True, 2: False}[r.id])
    vn = m.request_arrive(nw)
    assert vn.verdict == "untracked"
    va = m.request_arrive(anchor)
    assert va.verdict == "first"
    assert (vn.verdict, vn.anchor_id, vn.predicted_ret, vn.decided_by_kernel) == (
        "duplicate", 2, 0, True)
    assert m.modules()["x"].untracked == 0 and m.modules()["x"].duplicates == 1


def test_report_carries_the_kernels_verdict_beside_the_models() -> None:
    from tracer.report import request_json, request_line

    evs = _storm(3, [None, 0, 256])  # the kernel handed #2 0; the anchor returned 256
    rep = replay(evs, profile_with_dups(PROFILE_6_5))
    got = sorted((d["verdict"], d["predicted_ret"], d["kernel_verdict"], d["kernel_ret"])
                 for d in (request_json(r, v) for r, v in rep.requests))
    assert got == [("duplicate", 256, "duplicate", 0), ("duplicate", 256, "duplicate", 256),
                   ("first", 256, "first", 256)]
    # "!k" marks the one line where the kernel's traced verdict differs from the model's
    marked = [r for r, v in rep.requests if "!k" in request_line(r, v, 0)]
    assert [(r.kernel_verdict, r.kernel_ret) for r in marked] == [("duplicate", 0)]


def test_no_kernel_verdict_where_none_was_traced() -> None:
    from tracer.report import request_json, request_line

    evs = [e for e in _storm(2, [None, 256]) if e.kind != Kind.DUP_VERDICT]
    rep = replay(evs, PROFILE_6_5)
    for r, v in rep.requests:
        d = request_json(r, v)
        assert (d["kernel_verdict"], d["kernel_ret"]) == (None, None)
        assert "!k" not in request_line(r, v, 0)


def test_announces_follow_the_verdicts() -> None:
    """call_modprobe() announces on every path; a duplicate returns before it."""
    evs = _storm(3, [None, 256, 256], announcers={0})
    par = Parity()
    check_requests(replay(evs, profile_with_dups(PROFILE_6_5)), evs, par)
    assert (par.requests_checked, par.requests_agree, par.mismatches) == (3, 3, [])
    evs = _storm(3, [None, 256, 256], announcers={0, 2})  # a duplicate announced
    par = Parity()
    check_requests(replay(evs, profile_with_dups(PROFILE_6_5)), evs, par)
    assert [m.detail for m in par.mismatches] == [
        "model does not announce, kernel announced"]


def _dups_call(i: int, tp: int, enter: int, verdict: int, dup: bool,
               end: int | None = None) -> list[Event]:
    """Wait request #I for "x" whose kmod_dup_request_exists_wait() ran [ENTER, VERDICT],
    returning 0 at END (10 ms after ENTER if not given)."""
    return [Event(ts_ns=tp - 5, kind=Kind.REQ_ENTER, pid=i, tid=i, wait=1),
            Event(ts_ns=tp, kind=Kind.REQ_TP, pid=i, tid=i, wait=1, name="x"),
            Event(ts_ns=enter, kind=Kind.DUP_ENTER, pid=i, tid=i),
            Event(ts_ns=verdict, kind=Kind.DUP_VERDICT, pid=i, tid=i, wait=int(dup)),
            Event(ts_ns=end or enter + 10_000_000, kind=Kind.REQ_EXIT, pid=i, tid=i)]


def test_arrivals_are_ordered_at_the_dups_mutex_not_the_tracepoint() -> None:
    """Two requests whose tracepoints were 515 us apart reached kmod_dup_mutex in the
    other order (the first was preempted in between): the kprobe at
    kmod_dup_request_exists_wait() entry orders them as the kernel did (dups.c)."""
    t = 1_000_000_000
    # the anchor returns from dups.c at once (20 us), the duplicate after the announce
    evs = _dups_call(1, t, t + 1_200_000, t + 9_000_000, True) + _dups_call(
        2, t + 515_000, t + 600_000, t + 620_000, False)
    par = Parity()
    rep = replay(evs, profile_with_dups(PROFILE_6_5))
    check_requests(rep, evs, par)
    assert (par.requests_checked, par.requests_agree, par.ties) == (2, 2, 0), par.mismatches
    assert [v.indeterminate for _, v in rep.requests if v is not None] == [None, None]
    # by the tracepoints alone the model would get both wrong
    no_enter = [e for e in evs if e.kind != Kind.DUP_ENTER]
    par = Parity()
    check_requests(replay(no_enter, profile_with_dups(PROFILE_6_5)), no_enter, par)
    assert par.requests_agree == 0


def test_a_window_still_open_at_a_later_arrival_is_a_tie_in_a_replay() -> None:
    """As `live` meets it: #1's DUP_VERDICT is still to come when #2 enters dups.c 700 us
    after it, so the window is open and the arrival a tie. parity.run's second pass,
    given the kernel's verdicts, follows the kernel (#2 first) and counts the tie."""
    t = 1_000_000_000
    # #1 sleeps in dups.c until #2 returns (its announce) at 10.8 ms
    evs = _dups_call(1, t, t + 100_000, t + 10_810_000, True, t + 10_820_000) + _dups_call(
        2, t + 790_000, t + 800_000, t + 820_000, False)
    kernel = {r.tid: r.kernel_dup for r, _ in replay(evs, profile_with_dups(PROFILE_6_5))
              .requests}
    rep = replay(evs, profile_with_dups(PROFILE_6_5), oracle=lambda r: kernel[r.tid])
    par = Parity()
    check_requests(rep, evs, par)
    assert (par.requests_checked, par.requests_agree, par.ties) == (2, 2, 1), par.mismatches
    assert {r.tid: (v.verdict, v.indeterminate) for r, v in rep.requests if v} == {
        1: ("duplicate", "tie"), 2: ("first", "tie")}


def test_throttle_parity_counts_queued_and_timed_out_requests() -> None:
    """kmod_concurrent_max over the traced entries and returns: 50 holders, one sleeper
    handed a slot, one that timed out (-ETIME, no tracepoint)."""
    from kmodlab.parity import check_throttle

    evs: list[Event] = []
    for i in range(1, 51):
        evs += [Event(ts_ns=i, kind=Kind.REQ_ENTER, pid=i, tid=i, wait=1),
                Event(ts_ns=i + 1, kind=Kind.REQ_TP, pid=i, tid=i, wait=1, name="x"),
                Event(ts_ns=(3 if i == 1 else 20) * 10**9, kind=Kind.REQ_EXIT, pid=i, tid=i)]
    evs += [Event(ts_ns=100, kind=Kind.REQ_ENTER, pid=51, tid=51, wait=1),
            Event(ts_ns=200, kind=Kind.REQ_ENTER, pid=52, tid=52, wait=1),
            Event(ts_ns=5 * 10**9 + 200, kind=Kind.REQ_EXIT, pid=52, tid=52, ret=-62),
            Event(ts_ns=3 * 10**9 + 10, kind=Kind.REQ_TP, pid=51, tid=51, wait=1, name="x"),
            Event(ts_ns=20 * 10**9, kind=Kind.REQ_EXIT, pid=51, tid=51)]
    rep = replay(evs, profile_with_dups(PROFILE_6_5))
    par = Parity()
    check_throttle([r for r, _ in rep.requests], evs, par)
    assert (par.throttle_checked, par.throttle_agree, par.throttle_queued,
            par.throttle_timed_out, par.mismatches) == (52, 52, 2, 1, [])
    # had another holder returned within 5 s, the model would let the sleeper through:
    # the kernel's -ETIME disagrees
    evs = [e for e in evs if not (e.tid == 2 and e.kind == Kind.REQ_EXIT)] + [
        Event(ts_ns=4 * 10**9, kind=Kind.REQ_EXIT, pid=2, tid=2)]
    par = Parity()
    check_throttle([r for r, _ in replay(evs, PROFILE_6_5).requests], evs, par)
    assert [m.what.split(":")[0] for m in par.mismatches] == ["throttle"]


def _one_slot_race(a_returns_ns: int) -> Parity:
    """49 holders until 20 s, so one slot is free: A's kprobe fires first, B's 100 ns later
    and B reaches the tracepoint at once; the kernel gave the slot to B, and A returned
    -ETIME at A_RETURNS_NS."""
    from kmodlab.parity import check_throttle

    evs: list[Event] = []
    for i in range(1, 50):
        evs += [Event(ts_ns=i, kind=Kind.REQ_ENTER, pid=i, tid=i, wait=1),
                Event(ts_ns=i + 1, kind=Kind.REQ_TP, pid=i, tid=i, wait=1, name="x"),
                Event(ts_ns=20 * 10**9, kind=Kind.REQ_EXIT, pid=i, tid=i)]
    evs += [Event(ts_ns=100, kind=Kind.REQ_ENTER, pid=51, tid=51, wait=1),
            Event(ts_ns=200, kind=Kind.REQ_ENTER, pid=52, tid=52, wait=1),
            Event(ts_ns=210, kind=Kind.REQ_TP, pid=52, tid=52, wait=1, name="x"),
            Event(ts_ns=a_returns_ns, kind=Kind.REQ_EXIT, pid=51, tid=51, ret=-62),
            Event(ts_ns=21 * 10**9, kind=Kind.REQ_EXIT, pid=52, tid=52)]
    par = Parity()
    check_throttle([r for r, _ in replay(evs, PROFILE_6_5).requests], evs, par)
    return par


def test_a_swap_at_the_semaphore_inside_both_windows_is_a_throttle_tie() -> None:
    """A returned 5.3 s after its kprobe: it reached down_timeout() up to 300 ms after it,
    maybe after B. The model gave A the free slot; the kernel gave it to B: a tie."""
    par = _one_slot_race(5_300_000_100)
    assert (par.throttle_checked, par.throttle_agree, par.throttle_ties,
            par.mismatches) == (51, 51, 2, [])


def test_a_swap_the_windows_rule_out_stays_a_mismatch() -> None:
    """A returned -ETIME exactly 5 s after its kprobe: it slept from then, before B came,
    so the free slot was A's. The model's A holds it until A returns, in time for B to
    get it as it sleeps: only A disagrees, and with no partner it is no tie."""
    par = _one_slot_race(5_000_000_100)
    assert (par.throttle_checked, par.throttle_agree, par.throttle_ties) == (51, 50, 0)
    assert [m.what.split(" ")[2] for m in par.mismatches] == ["#50"]
