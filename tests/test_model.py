"""Tests for tracer/model/: the dups.c, idempotent(), patient-check and MODULE_STATS rules."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer import kernel
from tracer.model import (
    ANNOUNCE_SOURCE_TEXT,
    DUP_TAIL_NS,
    MAX_KMOD_CONCURRENT,
    MODULE_INIT_COMPRESSED_FILE,
    PROFILE_6_1,
    PROFILE_6_4,
    PROFILE_6_5,
    Announce,
    ByteClass,
    DupFailed,
    LoadVerdict,
    Model,
    Profile,
    RequestVerdict,
    kernel_disagrees,
    profile_json,
    profile_note,
    profile_with_dups,
    with_announce,
)
from tracer.stories import Load, Request

S = 1_000_000_000
MS = 1_000_000  # apart by more than TIE_NS: the trace orders them
ANNOUNCES: tuple[Announce, ...] = ("first", "deferred")
SIZE = 4_000


def mkreq(
    rid: int,
    name: str,
    t: int,
    end: int,
    ret: int,
    *,
    wait: bool = True,
    modprobe: bool = True,
    umh: tuple[int, int] | None = None,
) -> Request:
    """A request as the tracer finishes it; the model reads only each moment's fields."""
    r = Request(
        pid=rid, tid=rid, comm="kworker", ppid=2, wait=wait, start_ns=t, name=name, tp_ns=t,
        end_ns=end, ret=ret, modprobe_pid=10_000 + rid if modprobe else None, id=rid,
    )  # fmt: skip
    if umh is not None:
        r.umh_start_ns, r.umh_end_ns = umh
    return r


def mkload(
    lid: int,
    t: int,
    end: int,
    ret: int,
    *,
    name: str = "xfs",
    syscall: str = "finit_module",
    ino: int = 7,
    size: int = SIZE,
    flags: int = 0,
    loaded: bool | None = None,
) -> Load:
    return Load(
        syscall=syscall, pid=lid, tid=lid, comm="modprobe", ppid=1, start_ns=t, end_ns=end,
        ret=ret, file=f"{name}.ko" if syscall == "finit_module" else "", dev=8,
        ino=ino if syscall == "finit_module" else 0, size=size, flags=flags,
        kernel_name=name, loaded=(ret == 0) if loaded is None else loaded, id=lid,
    )  # fmt: skip


@dataclass
class Run:
    reqs: dict[int, RequestVerdict]
    loads: dict[int, LoadVerdict]
    at_arrival: dict[int, tuple[str, int | None, int | None]]  # verdict, predicted, wait


def replay(model: Model, reqs: Iterable[Request] = (), loads: Iterable[Load] = ()) -> Run:
    """Feed the moments in timestamp order (a return before an arrival at the same ns)."""
    moments: list[tuple[int, int, int, str, Request | Load]] = []
    for r in reqs:
        assert r.tp_ns is not None and r.end_ns is not None
        moments += [(r.tp_ns, 1, r.id, "arrive", r), (r.end_ns, 0, r.id, "done", r)]
    for ld in loads:
        assert ld.end_ns is not None
        moments += [(ld.start_ns, 1, ld.id, "start", ld), (ld.end_ns, 0, ld.id, "ldone", ld)]
    moments.sort(key=lambda m: m[:3])
    run = Run({}, {}, {})
    for _, _, _, kind, obj in moments:
        if kind == "arrive":
            assert isinstance(obj, Request)
            v = model.request_arrive(obj)
            run.at_arrival[obj.id] = (v.verdict, v.predicted_ret, v.would_wait_ns)
        elif kind == "done":
            assert isinstance(obj, Request)
            run.reqs[obj.id] = model.request_done(obj)
        elif kind == "start":
            assert isinstance(obj, Load)
            model.load_start(obj)
        else:
            assert isinstance(obj, Load)
            run.loads[obj.id] = model.load_done(obj)
    return run


# ---- profiles and the announce form (kernel-semantics.md sections 2 and 7) -------------------


def test_profiles_follow_the_version_table() -> None:
    rows = [(PROFILE_6_1, False, False, False), (PROFILE_6_4, False, False, True),
            (PROFILE_6_5, False, True, True)]
    for p, dups, idem, patient in rows:
        assert (p.dups, p.idempotent, p.patient, p.module_stats) == (dups, idem, patient, False)
        # Every released kernel 6.4-7.1 uses the deferred form: the default for all
        # profiles, assumed since none of them has dups.c to look at.
        assert (p.announce, p.announce_source) == ("deferred", "assumed"), p.name
    with_dups = profile_with_dups(PROFILE_6_4)
    assert (with_dups.dups, with_dups.idempotent, with_dups.patient, with_dups.announce) == (
        True, False, True, "deferred",
    )  # fmt: skip
    assert PROFILE_6_4.dups is False  # not mutated
    first = with_announce(PROFILE_6_5, "first")
    assert (first.announce, first.announce_source, first.idempotent) == ("first", "override", True)


def _symbols(*names: str) -> Callable[[str], bool]:
    return lambda name: name in names


DUPS_SYMS = ("kmod_dup_request_exists_wait", "init_module_from_file")


def _btf(*members: str) -> Callable[[str, str], bool | None]:
    """BTF's has_field for a kernel whose struct kmod_dup_req has MEMBERS (none: no such
    struct, dups.c not built in or no BTF)."""
    return lambda struct, field: (field in members) if members and struct == "kmod_dup_req" \
        else None


# struct kmod_dup_req's members in each form of kernel/module/dups.c
DEFERRED_STRUCT = ("list", "name", "first_req_done", "complete_work", "delete_work", "dup_ret")
REFCOUNT_STRUCT = ("refcount", "list", "name", "first_req_done", "delete_work", "dup_ret")


@pytest.mark.parametrize(
    ("symbols", "members", "release", "form", "source", "why"),
    [
        ((*DUPS_SYMS, "kmod_dup_request_complete"), (), "6.12.95", "deferred", "detected",
         "kmod_dup_request_complete(): the deferred form is built in"),
        (DUPS_SYMS, DEFERRED_STRUCT, "7.3.4+deb13-amd64", "deferred", "detected",
         "struct kmod_dup_req has complete_work (inlined work function): dups.c decides, "
         "not the release"),
        (DUPS_SYMS, REFCOUNT_STRUCT, "6.12.95", "first", "detected",
         "struct kmod_dup_req has refcount: the rework, whatever the release says"),
        (DUPS_SYMS, ("list", "name", "first_req_done", "delete_work", "dup_ret"), "7.3.4",
         "deferred", "assumed", "a layout of neither form: overwrite rules, not proven"),
        (DUPS_SYMS, (), "7.3.4+deb13-amd64", "first", "release",
         "dups.c without BTF to read: by release"),
        (("init_module_from_file",), (), "7.3.4+deb13-amd64", "first", "release",
         "no dups.c, 7.2 or later: the refcount form of that release"),
        (("init_module_from_file",), (), "7.2.13+deb14-amd64", "first", "release",
         "7.2.13 carries the refcount form"),
        (("init_module_from_file",), (), "6.12.95+deb12-amd64", "deferred", "release",
         "no dups.c, before 7.0: deferred"),
        ((), (), "6.1.0-57-amd64", "deferred", "release", "6.1: deferred, as 6.4 shipped it"),
        (("init_module_from_file",), (), "7.1.3", "deferred", "assumed",
         "7.0 and 7.1 are unproven either way"),
        (("init_module_from_file",), (), "custom", "deferred", "assumed",
         "no release number to go by"),
    ],
)  # fmt: skip
def test_announce_form_detection(symbols: tuple[str, ...], members: tuple[str, ...],
                                 release: str, form: str, source: str,
                                 why: str) -> None:  # fmt: skip
    f = kernel.detect(_symbols(*symbols), _btf(*members), release)
    assert (f.announce, f.announce_source) == (form, source), why
    assert (f.profile.announce, f.profile.announce_source) == (form, source), why
    d = f.to_dict()
    assert (d["announce"], d["announce_source"]) == (form, source)
    assert kernel.Features.from_dict(d) == f


def test_btf_is_not_read_without_dups() -> None:
    """Only a kernel with dups.c built in needs its BTF read for the form."""
    asked: list[tuple[str, str]] = []

    def has_field(struct: str, field: str) -> bool | None:
        asked.append((struct, field))
        return None

    kernel.detect(_symbols("init_module_from_file"), has_field, "7.3.4")
    assert asked == []
    kernel.detect(_symbols(*DUPS_SYMS), has_field, "7.3.4")
    assert ("kmod_dup_req", "refcount") in asked


def test_the_header_says_where_the_form_came_from() -> None:
    f = kernel.detect(_symbols("init_module_from_file"), None, "7.3.4+deb13-amd64")
    assert profile_note(f.profile).startswith("dups.c announce form first (by release); ")
    g = kernel.detect(_symbols(*DUPS_SYMS), _btf(*REFCOUNT_STRUCT), "7.3.4")
    assert profile_note(g.profile).startswith("dups.c announce form first (detected); ")


def test_announce_keys_absent_from_an_old_trace_header() -> None:
    old = {"release": "6.12", "dups": True, "dups_deferred": False, "idempotent": True,
           "patient": True, "module_stats": True, "profile": "6.5+/dups"}
    f = kernel.Features.from_dict(old)
    # The old reader took a missing kmod_dup_request_complete for "first": not proof; with
    # no struct to read, the release decides.
    assert (f.announce, f.announce_source, f.module_stats) == ("deferred", "release", True)
    assert kernel.Features.from_dict(old | {"release": "7.3.4"}).announce == "first"
    old["dups_deferred"] = True
    assert kernel.Features.from_dict(old).announce_source == "detected"


def test_announce_override_is_recorded_and_read_back() -> None:
    f = kernel.detect(_symbols(*DUPS_SYMS, "kmod_dup_request_complete"))
    assert (f.announce, f.announce_source) == ("deferred", "detected")
    g = f.with_announce(kernel.announce_form("first"))
    assert (g.announce, g.announce_source) == ("first", "override")
    h = kernel.Features.from_dict(g.to_dict())  # what a trace header carries
    assert (h.profile.announce, h.profile.announce_source) == ("first", "override")
    assert kernel.detect(_symbols(), None, "7.1").announce_source == "assumed"
    with pytest.raises(ValueError, match="unknown announce form"):
        kernel.announce_form("last")


def _tail_storm(profile: Profile) -> Run:
    """An untracked nowait announces 0 first and completes the entry; the anchor then
    announces 256 (kmod_dup_request_announce() matches by name only); #4 arrives in the
    tail after both."""
    return replay(Model(profile), [
        mkreq(1, "fs-xfs", 10 * MS, 40 * MS, 0, wait=False),
        mkreq(2, "fs-xfs", 20 * MS, 100 * MS, 256),
        mkreq(3, "fs-xfs", 30 * MS, 150 * MS, 0),
        mkreq(4, "fs-xfs", 200 * MS, 210 * MS, 0),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "ret", "indeterminate", "why"),
    [
        (PROFILE_6_1, 256, "announce-assumed",
         "dups.c kmod_dup_request_announce() 6.4-7.1: every announce stores dup_ret; the "
         "form was assumed, so the value is the model's guess"),
        (with_announce(PROFILE_6_1, "first"), 0, None,
         "newer dups.c: announces after completion_done() are ignored (override)"),
        (with_announce(PROFILE_6_1, "deferred"), 256, None, "deferred, as the user said"),
        (replace(profile_with_dups(PROFILE_6_5), announce_source="detected"), 256, None,
         "deferred form detected by kmod_dup_request_complete"),
    ],
)  # fmt: skip
def test_tail_duplicate_after_a_later_announce(profile: Profile, ret: int,
                                               indeterminate: str | None, why: str) -> None:
    run = _tail_storm(profile)
    assert (run.reqs[3].predicted_ret, run.reqs[3].indeterminate) == (0, None), why
    v = run.reqs[4]
    assert (v.verdict, v.anchor_id, v.predicted_ret, v.would_wait_ns) == (
        "duplicate", 2, ret, 0), why
    assert v.indeterminate == indeterminate, why


def test_tail_duplicate_is_determinate_when_both_announces_agree() -> None:
    run = replay(Model(PROFILE_6_1), [
        mkreq(1, "fs-xfs", 10 * MS, 40 * MS, 256, wait=False),
        mkreq(2, "fs-xfs", 20 * MS, 100 * MS, 256),
        mkreq(4, "fs-xfs", 200 * MS, 210 * MS, 0),
    ])  # fmt: skip
    assert (run.reqs[4].predicted_ret, run.reqs[4].indeterminate) == (256, None)


def test_traced_announce_time_completes_the_entry() -> None:
    """call_modprobe() announces before __request_module() returns: with the announce
    traced (Kind.DUP_ANNOUNCE), a request arriving between the two is no longer a waiter."""
    m = Model(PROFILE_6_1)
    a = mkreq(1, "fs-xfs", 10, 100, 256)
    a.kernel_announce_ns = 80
    m.request_arrive(a)
    late = mkreq(2, "fs-xfs", 90, 95, 0)
    v = m.request_arrive(late)
    m.request_done(late)
    m.request_done(a)
    assert (v.predicted_ret, v.would_wait_ns) == (256, 0)  # clamped: it came after it
    assert m.request_arrive(mkreq(3, "fs-xfs", 95, 96, 0)).predicted_ret == 256


@pytest.mark.parametrize(
    ("wait", "kernel_dup", "dup_ret", "verdict", "ret"),
    [
        (True, True, 0, "duplicate", 0),  # kmod_dup_request_exists_wait() true: *dup_ret
        (True, False, None, "first", 256),  # false for wait: it added the entry
        (False, False, None, "untracked", 256),  # false for nowait: not tracked
        (True, None, None, None, None),  # not traced
    ],
)  # fmt: skip
def test_kernel_verdict_of_a_request(wait: bool, kernel_dup: bool | None, dup_ret: int | None,
                                     verdict: str | None, ret: int | None) -> None:
    r = mkreq(1, "x", 10, 20, 256, wait=wait)
    r.kernel_dup, r.kernel_dup_ret = kernel_dup, dup_ret
    assert (r.kernel_verdict, r.kernel_ret) == (verdict, ret)


def test_kernel_disagreement() -> None:
    m = Model(profile_with_dups(PROFILE_6_5))
    a, d = mkreq(1, "x", 10, 100, 256), mkreq(2, "x", 20, 110, 0, modprobe=False)
    a.kernel_dup = False
    d.kernel_dup, d.kernel_dup_ret = True, 0  # the kernel handed it 0, the model says 256
    run = replay(m, [a, d])
    assert kernel_disagrees(a, run.reqs[1]) is False
    assert kernel_disagrees(d, run.reqs[2]) is True
    d.kernel_dup_ret = 256
    assert kernel_disagrees(d, run.reqs[2]) is False
    d.kernel_dup = False
    assert kernel_disagrees(d, run.reqs[2]) is True  # kernel: first, model: duplicate
    d.kernel_dup = None
    assert kernel_disagrees(d, run.reqs[2]) is False  # not traced: nothing to compare



# ---- dups.c ---------------------------------------------------------------------------------


def test_single_wait_request_is_first() -> None:
    m = Model(PROFILE_6_1)
    r = mkreq(1, "fs-xfs", 10, 50, 0)
    v = m.request_arrive(r)
    assert (v.verdict, v.anchor_id, v.predicted_ret) == ("first", None, None)
    v2 = m.request_done(r)
    assert v2 is v
    assert (v.verdict, v.predicted_ret, v.would_wait_ns, v.actual_ret) == ("first", 0, 0, 0)
    assert v.modprobe_saved is False
    assert v.oracle_agrees is None  # 6.1 has no dups.c to check against


@pytest.mark.parametrize("anchor_ret", [0, 256, -errno.ENOENT])
@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_wait_requests_one_first_rest_duplicates(anchor_ret: int, n: int) -> None:
    m = Model(PROFILE_6_1)
    # The anchor returns at 1000; duplicates return before and after it with other rets.
    reqs = [mkreq(1, "rtnl-link-dummy", 10, 1000, anchor_ret)]
    reqs += [mkreq(i, "rtnl-link-dummy", 10 + i, 500 + 100 * i, 999) for i in range(2, n + 1)]
    run = replay(m, reqs)
    assert run.reqs[1].verdict == "first"
    for i in range(2, n + 1):
        v = run.reqs[i]
        assert (v.verdict, v.anchor_id, v.predicted_ret) == ("duplicate", 1, anchor_ret)
        assert v.would_wait_ns == 1000 - (10 + i)
        assert v.modprobe_saved is True
        assert v.actual_ret == 999
    st_ = m.modules()["rtnl-link-dummy"]
    assert (st_.requests, st_.firsts, st_.duplicates, st_.modprobe_needed) == (n, 1, n - 1, 1)
    assert st_.dup_wait_ns == sum(1000 - (10 + i) for i in range(2, n + 1))


def test_duplicate_returning_before_the_anchor_is_filled_in_place() -> None:
    m = Model(PROFILE_6_1)
    a, d = mkreq(1, "fs-xfs", 10, 100, 256), mkreq(2, "fs-xfs", 20, 30, 0)
    m.request_arrive(a)
    m.request_arrive(d)
    v = m.request_done(d)
    assert (v.verdict, v.predicted_ret, v.would_wait_ns) == ("duplicate", None, None)
    m.request_done(a)
    assert (v.predicted_ret, v.would_wait_ns) == (256, 80)


def test_nowait_first_is_untracked_and_anchors_nothing() -> None:
    m = Model(PROFILE_6_1)
    run = replay(
        m,
        [
            mkreq(1, "net-pf-10", 10, 20, 0, wait=False),
            mkreq(2, "net-pf-10", 15, 25, 0, wait=False),  # overlaps 1: still untracked
            mkreq(3, "net-pf-10", 30, 90, 0),  # wait, after both: anchors the entry
        ],
    )
    assert [run.reqs[i].verdict for i in (1, 2, 3)] == ["untracked", "untracked", "first"]
    assert run.reqs[1].anchor_id is None
    s = m.modules()["net-pf-10"]
    assert (s.untracked, s.firsts, s.duplicates, s.modprobe_needed) == (2, 1, 0, 3)


def test_nowait_duplicate_returns_zero_at_once() -> None:
    m = Model(PROFILE_6_1)
    run = replay(
        m,
        [mkreq(1, "fs-xfs", 10, 100, 256), mkreq(2, "fs-xfs", 20, 40, 0, wait=False)],
    )
    assert run.at_arrival[2] == ("duplicate", 0, 0)  # known at arrival, no waiting
    v = run.reqs[2]
    assert (v.verdict, v.anchor_id, v.predicted_ret, v.would_wait_ns) == ("duplicate", 1, 0, 0)
    assert m.modules()["fs-xfs"].dup_wait_ns == 0


def test_nowait_announce_completes_a_wait_entry() -> None:
    m = Model(PROFILE_6_1)
    run = replay(
        m,
        [
            mkreq(1, "fs-xfs", 10, 40, 0, wait=False),  # untracked, announces 0 at 40
            mkreq(2, "fs-xfs", 20, 100, 256),  # first: the entry's anchor
            mkreq(3, "fs-xfs", 30, 150, 256),  # waits on the entry
        ],
    )
    assert [run.reqs[i].verdict for i in (1, 2, 3)] == ["untracked", "first", "duplicate"]
    dup = run.reqs[3]
    assert dup.anchor_id == 2
    assert dup.predicted_ret == 0  # the nowait's ret, not the anchor's 256
    assert dup.would_wait_ns == 40 - 30


def test_duplicate_in_tail_then_first_again_after_it() -> None:
    m = Model(PROFILE_6_1)
    done = 100
    run = replay(
        m,
        [
            mkreq(1, "fs-xfs", 10, done, 256),
            mkreq(2, "fs-xfs", done + DUP_TAIL_NS - 1, done + DUP_TAIL_NS + 5, 0),
            mkreq(3, "fs-xfs", done + DUP_TAIL_NS + 10, done + DUP_TAIL_NS + 20, 0),
        ],
    )
    assert run.at_arrival[2] == ("duplicate", 256, 0)  # cached ret, no wait
    assert (run.reqs[2].anchor_id, run.reqs[2].predicted_ret) == (1, 256)
    assert run.reqs[3].verdict == "first"


def test_tail_ends_exactly_tail_ns_after_completion() -> None:
    m = Model(PROFILE_6_1, tail_ns=1000)
    replay(m, [mkreq(1, "a", 0, 50, 0)])
    assert m.request_arrive(mkreq(2, "a", 1049, 1060, 0)).verdict == "duplicate"
    m.request_done(mkreq(2, "a", 1049, 1060, 0))
    assert m.request_arrive(mkreq(3, "a", 1050, 1070, 0)).verdict == "first"


def test_tail_holds_when_completions_arrive_out_of_order() -> None:
    m = Model(PROFILE_6_1, tail_ns=1000)
    a, b = mkreq(1, "a", 0, 100, 0), mkreq(2, "b", 10, 50, 0)
    m.request_arrive(a)
    m.request_arrive(b)
    m.request_done(a)
    m.request_done(b)  # its return reached us late: b's tail ends before a's
    assert m.request_arrive(mkreq(3, "b", 1051, 1060, 0)).verdict == "first"
    assert m.request_arrive(mkreq(4, "a", 1051, 1060, 0)).verdict == "duplicate"


def test_tail_is_per_request_string() -> None:
    m = Model(PROFILE_6_1)
    run = replay(m, [mkreq(1, "fs-xfs", 10, 100, 0), mkreq(2, "xfs", 20, 100, 0)])
    assert (run.reqs[1].verdict, run.reqs[2].verdict) == ("first", "first")  # no aliasing


def test_rejected_request_is_not_seen_by_dups() -> None:
    m = Model(PROFILE_6_1)
    r = mkreq(1, "fs-xfs", 10, 20, -errno.EPERM, modprobe=False)
    r.tp_ns = None
    assert m.request_arrive(r).verdict == "rejected"
    v = m.request_done(r)
    assert (v.verdict, v.actual_ret) == ("rejected", -errno.EPERM)
    # No entry was made: the next wait request anchors one.
    assert m.request_arrive(mkreq(2, "fs-xfs", 30, 40, 0)).verdict == "first"
    s = m.modules()["fs-xfs"]
    assert (s.rejected, s.requests) == (1, 1)


def test_oracle_kernel_agreement() -> None:
    m = Model(profile_with_dups(PROFILE_6_5))
    run = replay(
        m,
        [
            mkreq(1, "fs-xfs", 10, 100, 256),  # ran modprobe: agrees
            mkreq(2, "fs-xfs", 20, 101, 256, modprobe=False),  # dup, same ret: agrees
            mkreq(3, "fs-xfs", 30, 102, 0, modprobe=False),  # dup, other ret: disagrees
            mkreq(4, "fs-xfs", 40, 103, 256),  # dup that ran modprobe: disagrees
        ],
    )
    assert [run.reqs[i].oracle_agrees for i in (1, 2, 3, 4)] == [True, True, False, False]
    assert run.reqs[2].modprobe_saved is False  # on this kernel it ran none
    assert run.reqs[4].modprobe_saved is True


def test_lost_anchor_is_forgotten_after_stale_ns() -> None:
    never_done = mkreq(1, "fs-xfs", 0, 10**18, 0)
    for stale, third in ((100 * S, "first"), (None, "duplicate")):
        m = Model(PROFILE_6_1, stale_ns=stale)
        m.request_arrive(never_done)
        assert m.request_arrive(mkreq(2, "fs-xfs", 10, 20, 0)).verdict == "duplicate"
        m.request_done(mkreq(2, "fs-xfs", 10, 20, 0))
        assert m.request_arrive(mkreq(3, "fs-xfs", 200 * S, 200 * S + 5, 0)).verdict == third


# ---- idempotent() ---------------------------------------------------------------------------


def test_idempotent_converges_same_inode_with_no_tail() -> None:
    m = Model(PROFILE_6_5)
    run = replay(
        m,
        loads=[
            mkload(1, 10, 100, 0),  # the winner
            mkload(2, 20, 100, 0, loaded=False),  # waiters: the winner's ret, no load
            mkload(3, 30, 101, 0, loaded=False),
            mkload(4, 200, 210, -errno.EEXIST),  # after the winner returned: new winner
        ],
    )
    assert (run.loads[1].outcome, run.loads[1].would_converge) == ("loaded", False)
    for i in (2, 3):
        v = run.loads[i]
        assert (v.outcome, v.converged, v.rule, v.winner_id, v.would_converge) == (
            "loaded", True, "idempotent", 1, True,
        )  # fmt: skip
        assert (v.wasted_bytes, v.bytes_saved) == (0, 0)
    v4 = run.loads[4]
    assert (v4.outcome, v4.rule, v4.winner_id, v4.would_converge) == (
        "EEXIST", "patient-becoming", None, False,
    )  # fmt: skip
    s = m.modules()["xfs"]
    # the waiters returned 0: OK, and marked converged
    assert (s.loads, s.loads_ok, s.converged, s.would_converge) == (4, 3, 2, 2)
    assert (s.load_failures, s.converged_failures) == ({"EEXIST": 1}, {})
    assert s.extra_reads == 1  # the EEXIST attempt read; the waiters did not


def test_idempotent_waiter_of_a_succeeding_winner_counts_as_ok() -> None:
    m = Model(PROFILE_6_5)
    run = replay(m, loads=[mkload(1, 10, 100, 0), mkload(2, 20, 100, 0, loaded=False)])
    v = run.loads[2]
    assert (v.outcome, v.converged, v.wasted_bytes, v.winner_id) == ("loaded", True, 0, 1)
    assert not run.loads[1].converged
    s = m.modules()["xfs"]
    assert (s.loads, s.loads_ok, s.converged, s.load_failures) == (2, 2, 1, {})
    assert (s.reads, s.extra_reads, s.wasted_bytes) == (1, 0, 0)


def test_idempotent_waiter_gets_a_failing_winners_ret() -> None:
    m = Model(PROFILE_6_5)
    run = replay(
        m,
        loads=[
            mkload(1, 10, 100, -errno.ENOEXEC),
            mkload(2, 20, 100, -errno.ENOEXEC),
        ],
    )
    # main.c idempotent_wait_for_completion() returns the winner's -ENOEXEC: both failed
    w, x = run.loads[1], run.loads[2]
    assert (w.outcome, w.converged, w.wasted_bytes > 0) == ("ENOEXEC", False, True)
    assert (x.outcome, x.converged, x.rule, x.wasted_bytes, x.byte_class) == (
        "ENOEXEC", True, "idempotent", 0, None)
    s = m.modules()["xfs"]
    assert (s.loads, s.loads_ok, s.load_failures, s.converged, s.converged_failures) == (
        2, 0, {"ENOEXEC": 2}, 1, {"ENOEXEC": 1})
    assert s.wasted_bytes == w.wasted_bytes  # the kernel spends nothing on the waiter
    assert m.stats().failed_load == 1  # only the winner reached stats.c


def test_idempotent_interrupted_waiter_is_eintr() -> None:
    m = Model(PROFILE_6_5)
    m.load_start(mkload(1, 10, 100, 0))
    m.load_start(mkload(2, 20, 50, -errno.EINTR))
    v = m.load_done(mkload(2, 20, 50, -errno.EINTR))
    assert (v.outcome, v.rule, v.wasted_bytes) == ("EINTR", "idempotent", 0)


def test_different_inodes_do_not_converge() -> None:
    m = Model(PROFILE_6_5)
    run = replay(
        m,
        loads=[mkload(1, 10, 100, 0, ino=7), mkload(2, 20, 100, -errno.EEXIST, ino=8)],
    )
    v = run.loads[2]
    assert (v.outcome, v.would_converge, v.winner_id) == ("EEXIST", False, None)
    assert v.wasted_bytes == SIZE


def test_init_module_never_converges() -> None:
    m = Model(PROFILE_6_5)
    loads = [mkload(1, 10, 100, 0, syscall="init_module")]
    loads += [mkload(i, 10 + i, 100, -errno.EEXIST, syscall="init_module") for i in (2, 3)]
    run = replay(m, loads=loads)
    for i in (2, 3):
        v = run.loads[i]
        assert (v.outcome, v.rule, v.would_converge, v.bytes_saved) == (
            "EEXIST", "patient-becoming", False, 0,
        )  # fmt: skip
    assert m.modules()["xfs"].extra_reads == 2


def test_pre_idempotent_kernel_reports_what_idempotent_would_save() -> None:
    m = Model(PROFILE_6_1)
    run = replay(m, loads=[mkload(1, 10, 100, 0), mkload(2, 20, 100, -errno.EEXIST)])
    v = run.loads[2]
    assert (v.outcome, v.rule, v.winner_id, v.would_converge) == ("EEXIST", "exists", 1, True)
    assert (v.wasted_bytes, v.bytes_saved) == (2 * SIZE, 2 * SIZE)
    assert m.stats().bytes_saved_idempotent == 2 * SIZE


# ---- module_patient_check_exists() ----------------------------------------------------------


def test_patient_check_eexist_when_live_ebusy_when_not() -> None:
    m = Model(PROFILE_6_4)
    run = replay(
        m,
        loads=[
            mkload(1, 10, 100, 0, ino=1),  # goes LIVE
            mkload(2, 20, 100, -errno.EEXIST, ino=2),  # waited, found it LIVE
            mkload(3, 200, 300, -errno.ENODEV, name="bad", ino=3, loaded=True),  # init fails
            mkload(4, 210, 300, -errno.EBUSY, name="bad", ino=4),  # waited, it went away
        ],
    )
    assert (run.loads[2].outcome, run.loads[2].rule) == ("EEXIST", "patient-becoming")
    assert (run.loads[3].outcome, run.loads[3].rule, run.loads[3].wasted_bytes) == (
        "ENODEV", None, 0,
    )  # fmt: skip
    assert (run.loads[4].outcome, run.loads[4].rule) == ("EBUSY", "patient-becoming")
    assert m.modules()["bad"].load_failures == {"ENODEV": 1, "EBUSY": 1}


def test_patient_load_reason_when_a_later_starter_overtook() -> None:
    m = Model(PROFILE_6_4)
    run = replay(m, loads=[mkload(1, 10, 100, -errno.EEXIST, ino=1), mkload(2, 20, 90, 0, ino=2)])
    assert (run.loads[1].rule, run.loads[1].wasted_bytes) == ("patient-load", 2 * SIZE)


def test_patient_becoming_when_module_already_live() -> None:
    m = Model(PROFILE_6_4)
    run = replay(m, loads=[mkload(1, 10, 20, 0), mkload(2, 1000, 1010, -errno.EEXIST, ino=9)])
    assert (run.loads[2].rule, run.loads[2].wasted_bytes) == ("patient-becoming", SIZE)


# ---- MODULE_STATS ---------------------------------------------------------------------------

MAIN = "kernel/module/main.c"
SIGNED = SIZE + 700  # a signed module's file: info->len is SIZE once the signature is stripped
BIG = 3 * SIZE  # a compressed module's info->len, the file being SIZE
# module_sig_check() traced (CONFIG_MODULE_SIG): a load without MOD_LEN (mod_len None)
# never reached load_module(), which tells the phases of one errno apart exactly
SIG = replace(PROFILE_6_5, sig_check=True)


@dataclass(frozen=True)
class Cost:
    what: str
    profile: Profile
    ret: int
    byte_class: ByteClass | None
    wasted: int
    approx: bool
    cite: str
    syscall: str = "finit_module"
    flags: int = 0
    loaded: bool = False
    size: int = SIZE
    mod_len: int | None = None
    rule: str | None = None
    patient: str | None = None  # the module_patient_check_exists() call traced last
    # info->len charged but not seen (no MOD_LEN); None: whenever becoming/invalid has no
    # mod_len, as on kernels where module_sig_check() is not traced
    len_unknown: bool | None = None


COSTS = [
    Cost("patient check in early_mod_check: becoming, len", PROFILE_6_4, -errno.EEXIST,
         "becoming", SIZE, False, f"{MAIN} early_mod_check() module_patient_check_exists()",
         rule="patient-becoming"),
    Cost("EBUSY from the same check", PROFILE_6_4, -errno.EBUSY, "becoming", SIZE, False,
         f"{MAIN} module_patient_check_exists(): -EBUSY when not LIVE",
         rule="patient-becoming"),
    Cost("pre-6.4 name check after layout: invalid, 2 * len", PROFILE_6_1, -errno.EEXIST,
         "invalid", 2 * SIZE, False, f"{MAIN} add_unformed_module() after layout_and_allocate()",
         rule="exists"),
    Cost("len is info->len, the signature stripped", PROFILE_6_4, -errno.EEXIST, "becoming",
         SIZE, False, f"{MAIN} load_module() module_sig_check() adjusts info->len",
         size=SIGNED, mod_len=SIZE, rule="patient-becoming"),
    Cost("compressed becoming: len + compressed len", PROFILE_6_4, -errno.EEXIST, "becoming",
         BIG + SIZE, False, "kernel/module/stats.c mod_stat_bump_becoming()",
         flags=MODULE_INIT_COMPRESSED_FILE, mod_len=BIG, rule="patient-becoming"),
    Cost("compressed invalid: 2 * len + compressed len", PROFILE_6_1, -errno.EEXIST, "invalid",
         2 * BIG + SIZE, False, "kernel/module/stats.c mod_stat_bump_invalid()",
         flags=MODULE_INIT_COMPRESSED_FILE, mod_len=BIG, rule="exists"),
    Cost("compressed, len unknown: the file size stands for it", PROFILE_6_4, -errno.EEXIST,
         "becoming", 2 * SIZE, False, "kernel/module/stats.c mod_stat_bump_becoming()",
         flags=MODULE_INIT_COMPRESSED_FILE, rule="patient-becoming"),
    Cost("blacklisted -EPERM after the read: becoming", PROFILE_6_5, -errno.EPERM, "becoming",
         SIZE, True, f"{MAIN} early_mod_check() blacklisted()"),
    Cost("parse_args -EINVAL after the allocation: invalid", PROFILE_6_5, -errno.EINVAL,
         "invalid", 2 * SIZE, True, f"{MAIN} load_module() parse_args() -> coming_cleanup"),
    Cost("relocation or duplicate symbol -ENOEXEC: invalid", PROFILE_6_5, -errno.ENOEXEC,
         "invalid", 2 * SIZE, True,
         f"{MAIN} apply_relocations(), complete_formation() verify_exported_symbols()"),
    Cost("unknown symbol -ENOENT after the allocation: invalid", PROFILE_6_5, -errno.ENOENT,
         "invalid", 2 * SIZE, False, f"{MAIN} load_module() simplify_symbols()"),
    Cost("signature rejected before the allocation: becoming", PROFILE_6_5,
         -errno.EKEYREJECTED, "becoming", SIZE, False, f"{MAIN} load_module() module_sig_check()"),
    Cost("init_module copy -EFAULT: len to invalid_kread_bytes", PROFILE_6_5, -errno.EFAULT,
         "kread", SIZE, True, f"{MAIN} SYSCALL_DEFINE3(init_module) copy_module_from_user()",
         syscall="init_module"),
    Cost("failed finit read counts nothing since 6.5", PROFILE_6_5, -errno.ETXTBSY, "kread", 0,
         False, f"{MAIN} init_module_from_file() kernel_read_file() < 0"),
    Cost("finit -ENOMEM taken as the read's vmalloc", PROFILE_6_5, -errno.ENOMEM, "kread", 0,
         True, f"{MAIN} init_module_from_file() kernel_read_file()"),
    Cost("decompression failure counts the compressed length", PROFILE_6_5, -errno.EOPNOTSUPP,
         "decompress", SIZE, False, f"{MAIN} init_module_from_file() module_decompress()",
         flags=MODULE_INIT_COMPRESSED_FILE, mod_len=BIG),
    Cost("compressed -EINVAL taken as the decompressor's", PROFILE_6_5, -errno.EINVAL,
         "decompress", SIZE, True, "kernel/module/decompress.c module_xz_decompress()",
         flags=MODULE_INIT_COMPRESSED_FILE),
    Cost("fd checks fail before the read: nothing", PROFILE_6_5, -errno.EBADF, None, 0, False,
         f"{MAIN} idempotent_init_module() FMODE_READ"),
    Cost("failure inside the module's init counts nothing", PROFILE_6_5, -errno.ENODEV, None, 0,
         False, f"{MAIN} do_init_module() bumps no MODULE_STATS counter", loaded=True),
    Cost("a load counts nothing", PROFILE_6_5, 0, None, 0, False, f"{MAIN} do_init_module()",
         loaded=True),
    # Where the trace shows which module_patient_check_exists() call refused the load
    Cost("traced check in add_unformed_module(): invalid, 2 * len", PROFILE_6_5,
         -errno.EEXIST, "invalid", 2 * SIZE, False,
         f"{MAIN} add_unformed_module() module_patient_check_exists(FAIL_DUP_MOD_LOAD)",
         rule="patient-load", patient="Load"),
    Cost("traced check in early_mod_check(): becoming, len", PROFILE_6_5, -errno.EBUSY,
         "becoming", SIZE, False,
         f"{MAIN} early_mod_check() module_patient_check_exists(FAIL_DUP_MOD_BECOMING)",
         rule="patient-becoming", patient="Becoming"),
    # Where module_sig_check() was traced (every CONFIG_MODULE_SIG kernel)
    Cost("sig: blacklisted -EPERM after module_sig_check(): becoming, exact", SIG,
         -errno.EPERM, "becoming", SIZE, False, f"{MAIN} early_mod_check() blacklisted()",
         size=SIGNED, mod_len=SIZE),
    Cost("sig: -EPERM before load_module(): an LSM refusing the read, or may_init_module()",
         SIG, -errno.EPERM, "kread", 0, True,
         "fs/kernel_read_file.c security_kernel_read_file() (LoadPin), main.c "
         "init_module_from_file() failed_kreads; may_init_module() returns it too"),
    Cost("sig: a BPF LSM's -EACCES in kernel_read_file(): failed_kreads, no bytes", SIG,
         -errno.EACCES, "kread", 0, False,
         f"{MAIN} init_module_from_file() kernel_read_file() < 0: mod_stat_inc(failed_kreads)"),
    Cost("sig: -EIO reading the file: failed_kreads", SIG, -errno.EIO, "kread", 0, False,
         "fs/kernel_read_file.c kernel_read_file() -EIO"),
    Cost("sig: -EINVAL in kernel_read_file() (not a regular file, empty): failed_kreads", SIG,
         -errno.EINVAL, "kread", 0, False, "fs/kernel_read_file.c !S_ISREG, i_size <= 0"),
    Cost("sig: -EBADF, the fd check before the read: nothing", SIG, -errno.EBADF, None, 0,
         False, f"{MAIN} idempotent_init_module() !(f->f_mode & FMODE_READ)"),
    Cost("sig: init_module, an LSM's -EPERM in the copy: failed_kreads, len", SIG,
         -errno.EPERM, "kread", SIZE, True,
         f"{MAIN} copy_module_from_user() security_kernel_load_data()", syscall="init_module"),
    Cost("sig: init_module, a buffer shorter than an ELF header: -ENOEXEC in the copy", SIG,
         -errno.ENOEXEC, "kread", 32, False,
         f"{MAIN} copy_module_from_user() len < sizeof(*(info->hdr))", syscall="init_module",
         size=32),
    Cost("sig: -ENOENT with no MOD_LEN: only load_module() returns it, so len unknown", SIG,
         -errno.ENOENT, "invalid", 2 * SIZE, False,
         f"{MAIN} load_module() simplify_symbols(); module_sig_check() kretprobe missed",
         len_unknown=True),
    Cost("sig: patient check with no MOD_LEN: reached load_module(), len unknown", SIG,
         -errno.EEXIST, "becoming", SIZE, False, f"{MAIN} early_mod_check()",
         rule="patient-becoming", patient="Becoming", len_unknown=True),
    Cost("sig: MOD_LEN seen: len known", SIG, -errno.ENOENT, "invalid", 2 * SIZE, False,
         f"{MAIN} load_module() simplify_symbols()", size=SIGNED, mod_len=SIZE,
         len_unknown=False),
    Cost("sig: parse_args -EINVAL: invalid, exact", SIG, -errno.EINVAL, "invalid", 2 * SIZE,
         False, f"{MAIN} load_module() parse_args() -> coming_cleanup -> free_module",
         size=SIGNED, mod_len=SIZE),
    Cost("sig: -EINVAL before load_module(), an unknown flag: the flags check, nothing", SIG,
         -errno.EINVAL, None, 0, False, f"{MAIN} SYSCALL_DEFINE3(finit_module) flags",
         flags=8),
    Cost("sig: compressed -EINVAL before load_module(): the decompressor", SIG, -errno.EINVAL,
         "decompress", SIZE, False, f"{MAIN} init_module_from_file() module_decompress()",
         flags=MODULE_INIT_COMPRESSED_FILE),
    Cost("sig: compressed -EINVAL in load_module(): parse_args, 2 * len + compressed len",
         SIG, -errno.EINVAL, "invalid", 2 * BIG + SIZE, False,
         "kernel/module/stats.c mod_stat_bump_invalid() info->compressed_len",
         flags=MODULE_INIT_COMPRESSED_FILE, mod_len=BIG),
    Cost("sig: init_module -EFAULT before load_module(): the copy, len to kread", SIG,
         -errno.EFAULT, "kread", SIZE, False,
         f"{MAIN} SYSCALL_DEFINE3(init_module) copy_module_from_user()", syscall="init_module"),
    Cost("sig: init_module -EFAULT in load_module(): strndup_user(), invalid", SIG,
         -errno.EFAULT, "invalid", 2 * SIZE, False, f"{MAIN} load_module() strndup_user()",
         syscall="init_module", mod_len=SIZE),
    Cost("sig: finit read failure: failed_kreads, no bytes", SIG, -errno.ETXTBSY, "kread", 0,
         False, f"{MAIN} init_module_from_file() kernel_read_file() < 0"),
]  # fmt: skip

BYTES = {"kread": "invalid_kread_bytes", "decompress": "invalid_decompress_bytes",
         "becoming": "invalid_becoming_bytes", "invalid": "invalid_mod_bytes"}
FAILS = {"kread": "failed_kreads", "decompress": "failed_decompress",
         "becoming": "failed_becoming", "invalid": "failed_load"}


@pytest.mark.parametrize("c", COSTS, ids=[c.what for c in COSTS])
def test_module_stats_cost_of_a_failed_attempt(c: Cost) -> None:
    m = Model(c.profile)
    # A LIVE same-name module first (a different inode so idempotent() stays out of it).
    replay(m, loads=[mkload(1, 10, 20, 0, ino=1)])
    attempt = mkload(2, 30, 40, c.ret, ino=2, syscall=c.syscall, flags=c.flags,
                     loaded=c.loaded, size=c.size)  # fmt: skip
    attempt.mod_len, attempt.patient_check = c.mod_len, c.patient
    v = replay(m, loads=[attempt]).loads[2]
    assert (v.rule, v.byte_class, v.wasted_bytes, v.wasted_approx) == (
        c.rule, c.byte_class, c.wasted, c.approx), c.cite
    unknown = c.len_unknown if c.len_unknown is not None else (
        c.mod_len is None and c.byte_class in ("becoming", "invalid"))
    assert v.len_unknown == unknown, c.cite
    s = m.stats()
    assert s.len_unknown == int(unknown)
    for cls in BYTES:
        mine = cls == c.byte_class
        assert getattr(s, BYTES[cls]) == (c.wasted if mine else 0), (cls, c.cite)
        assert getattr(s, FAILS[cls]) == int(mine), (cls, c.cite)
    # read_file_mod_stats(): "Virtual mem wasted bytes" is the sum of the four
    assert s.wasted_bytes == c.wasted
    assert (s.approximate, s.modelled) == (int(c.approx), True)
    assert m.modules()["xfs"].wasted_bytes == c.wasted


def test_stats_are_the_kernels_only_with_module_stats() -> None:
    with_stats = replace(PROFILE_6_5, module_stats=True)
    assert Model(with_stats).stats().modelled is False
    assert Model(PROFILE_6_5).stats().modelled is True
    assert profile_json(with_stats)["stats_source"] == "kernel"
    assert profile_json(PROFILE_6_1) == {
        "stats_source": "modelled", "announce": {"form": "deferred", "source": "assumed"}}
    assert "modelled" in profile_note(PROFILE_6_1)


def test_wasted_bytes_add_up_across_classes() -> None:
    m = Model(PROFILE_6_5)
    replay(m, loads=[
        mkload(1, 10, 20, -errno.EPERM, ino=1),
        mkload(2, 30, 40, -errno.ENOENT, ino=2),
        mkload(3, 50, 60, -errno.EFAULT, ino=3, syscall="init_module"),
        mkload(4, 70, 80, -errno.EOPNOTSUPP, ino=4, flags=MODULE_INIT_COMPRESSED_FILE),
    ])  # fmt: skip
    s = m.stats()
    assert (s.invalid_becoming_bytes, s.invalid_mod_bytes, s.invalid_kread_bytes,
            s.invalid_decompress_bytes) == (SIZE, 2 * SIZE, SIZE, SIZE)
    assert s.wasted_bytes == 5 * SIZE == m.modules()["xfs"].wasted_bytes
    # EPERM, ENOENT and the failed decompression read the file, the failed copy did not;
    # one read would have been needed
    assert m.modules()["xfs"].extra_reads == 2



def test_duplicate_failed_modules_table() -> None:
    m = Model(PROFILE_6_4)
    loads = [
        mkload(1, 10, 100, -errno.EEXIST, ino=1),  # nothing before it: Load
        mkload(2, 20, 90, 0, ino=2),
        mkload(3, 30, 100, -errno.EEXIST, ino=3),  # Becoming
        mkload(4, 40, 100, -errno.EEXIST, ino=4),  # Becoming
        mkload(5, 300, 400, -errno.ENODEV, name="bad", ino=5, loaded=True),
        mkload(6, 310, 400, -errno.EBUSY, name="bad", ino=6),  # Becoming
        mkload(7, 500, 600, -errno.ENOEXEC, name="broken", ino=7),  # not a duplicate
    ]
    replay(m, loads=loads)
    table = m.stats().dup_failed
    assert table == {
        "xfs": DupFailed("xfs", 3, "Becoming & Load"),
        "bad": DupFailed("bad", 1, "Becoming"),
    }
    m61 = Model(PROFILE_6_1)
    replay(m61, loads=[mkload(1, 10, 100, 0, ino=1), mkload(2, 20, 100, -errno.EEXIST, ino=2)])
    assert m61.stats().dup_failed == {"xfs": DupFailed("xfs", 1, "Load")}


# ---- per-module stats -----------------------------------------------------------------------


def test_module_stats_columns() -> None:
    m = Model(PROFILE_6_1)
    reqs = [
        mkreq(1, "fs-xfs", 10, 100, 0, umh=(20, 90)),
        mkreq(2, "fs-xfs", 20, 110, 0, umh=(30, 100)),  # dup: waits 80, saves 70 ns of modprobe
        mkreq(3, "fs-xfs", 30, 40, 0, wait=False, umh=(31, 35)),  # nowait dup: saves 4 ns
        mkreq(4, "fs-xfs", 200, 250, 0, modprobe=False),  # tail dup: its own race
    ]
    loads = [
        mkload(1, 50, 95, 0, ino=5),
        mkload(2, 60, 95, -errno.EEXIST, ino=5),  # same inode: idempotent would converge it
        mkload(3, 70, 96, -errno.EEXIST, ino=6),  # a copy: it would not
    ]
    replay(m, reqs, loads)
    mods = m.modules()
    assert set(mods) == {"fs-xfs", "xfs"}  # requests by string, loads by module name
    r = mods["fs-xfs"]
    assert (r.requests, r.firsts, r.duplicates, r.untracked, r.rejected) == (4, 1, 3, 0, 0)
    assert (r.modprobe_spawns, r.modprobe_needed, r.extra_modprobe) == (3, 1, 2)
    assert (r.dup_wait_ns, r.race_window_ns) == (80, 20)
    assert r.extra_ms == pytest.approx(74 / 1e6)
    assert (r.loads, r.wasted_bytes, r.extra_reads) == (0, 0, 0)
    ld = mods["xfs"]
    assert (ld.loads, ld.loads_ok, ld.load_failures, ld.converged) == (3, 1, {"EEXIST": 2}, 0)
    assert (ld.would_converge, ld.wasted_bytes, ld.bytes_saved) == (1, 4 * SIZE, 2 * SIZE)
    assert (ld.race_window_ns, ld.extra_reads) == (20, 2)
    assert ld.extra_ms == pytest.approx((35 + 26) / 1e6)
    assert (ld.requests, ld.modprobe_needed, ld.extra_modprobe) == (0, 0, 0)


def test_race_window_takes_the_largest_overlapping_group() -> None:
    m = Model(PROFILE_6_1)
    reqs = [
        mkreq(1, "a", 0, 100, 0),
        mkreq(2, "a", 50, 150, 0),
        mkreq(3, "a", 140, 160, 0),  # overlaps 2 only: same race, window 140
        mkreq(4, "a", 1000, 2000, 0),  # a new race
        mkreq(5, "a", 1100, 1200, 0),
    ]
    replay(m, reqs)
    assert m.modules()["a"].race_window_ns == 140


def test_race_window_for_loads_named_only_at_exit() -> None:
    m = Model(PROFILE_6_1)
    a = mkload(1, 10, 50, 0, syscall="init_module", name="")
    b = mkload(2, 30, 60, -errno.EEXIST, syscall="init_module", name="")
    c = mkload(3, 500, 600, -errno.EEXIST, syscall="init_module", name="")
    m.load_start(a)
    m.load_start(b)
    a.kernel_name = "xfs"
    m.load_done(a)
    b.kernel_name = "xfs"
    assert m.load_done(b).module == "xfs"
    m.load_start(c)
    c.kernel_name = "xfs"
    m.load_done(c)
    s = m.modules()["xfs"]
    assert (s.loads, s.race_window_ns, s.extra_reads) == (3, 20, 2)


def test_counters_are_defined_once_for_table_and_json() -> None:
    from tracer import report

    assert report.SUMMARY_COLUMNS == (
        "MODULE", "REQS", "DUPS", "REJ", "MODPROBE", "LOADS", "OK", "FAILED", "CONVERGED",
        "XREADS", "WASTED", "RACE(ms)", "DUPWAIT(ms)", "COST(ms)")  # fmt: skip
    m = Model(PROFILE_6_1)
    replay(m, [mkreq(1, "xfs", 0, 3 * MS, 0), mkreq(2, "xfs", MS, 4 * MS, 0)],
           [mkload(1, MS, 2 * MS, 0), mkload(2, MS, 2 * MS, -errno.EEXIST, ino=8)])
    s = m.modules()["xfs"]
    (row,) = report.summary_rows({"xfs": s})  # COST: the dup's 3 ms modprobe + 1 ms EEXIST
    assert row == ("xfs", "2", "1", "0", "2/1", "2", "1", "EEXIST:1", "0", "1", "7.8KiB",
                   "1.00", "2.00", "4.0")  # fmt: skip
    doc = report.module_json(s)
    # the README's `report --json` modules{name} keys
    assert {"requests", "duplicates", "untracked", "modprobe_spawns", "modprobe_needed",
            "loads_ok", "load_failures", "converged", "wasted_bytes", "race_window_ns",
            "dup_wait_ns"} <= set(doc)  # fmt: skip
    assert {k: doc[k] for k in ("modprobe_needed", "extra_modprobe", "load_failures")} == {
        "modprobe_needed": 1, "extra_modprobe": 1, "load_failures": {"EEXIST": 1}}


# ---- what the report says about the model's sources -----------------------------------------


@pytest.mark.parametrize(
    ("args", "announce"),
    # the 6.1 trace's header predates the announce keys: its release decides
    [((), {"form": "deferred", "source": "release"}),
     (("--announce", "first"), {"form": "first", "source": "override"})],
)  # fmt: skip
def test_report_says_where_announce_and_stats_come_from(args: tuple[str, ...],
                                                        announce: dict[str, str]) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    trace = root / "tests" / "data" / "vm-6.1" / "trace.jsonl"
    run = [sys.executable, "-m", "tracer", "report", *args]
    p = subprocess.run([*run, "--json", str(trace)], capture_output=True, text=True,
                       cwd=root, timeout=120, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    from tests.schema_check import check_report

    doc = check_report(json.loads(p.stdout))
    assert (doc["stats_source"], doc["announce"]) == ("modelled", announce)
    text = subprocess.run([*run, str(trace)], capture_output=True, text=True, cwd=root,
                          timeout=120, check=False).stdout  # fmt: skip
    source = ANNOUNCE_SOURCE_TEXT[announce["source"]]
    assert f"dups.c announce form {announce['form']} ({source}); MODULE_STATS " \
        "figures modelled" in text


# ---- the kmod throttle under simulated dups -------------------------------------------------

KMOD_C = "kernel/module/kmod.c __request_module()"
KMOD = f"{KMOD_C}: up(&kmod_concurrent_max) only as it returns"


def test_sleeping_wait_duplicates_hold_their_throttle_slots() -> None:
    """51 wait requests while the anchor's modprobe runs: under dups 49 sleep on it, each
    holding its slot, so the 51st finds all 50 held and would queue."""
    n = MAX_KMOD_CONCURRENT + 1
    reqs = [mkreq(1, "fs-xfs", MS, S, 0)]
    # on the actual kernel each ran its own short modprobe and returned at once
    reqs += [mkreq(i, "fs-xfs", i * MS, i * MS + 1000, 0) for i in range(2, n + 1)]
    m = Model(PROFILE_6_1)
    run = replay(m, reqs)
    assert [run.reqs[i].slots_held for i in (1, 2, n - 1, n)] == [0, 1, n - 2, n - 1], KMOD
    assert m.modules()["fs-xfs"].would_queue == 1
    # completion woke them all: a request after it finds no slot held
    assert m.request_arrive(mkreq(99, "fs-xfs", 2 * S, 2 * S + 5, 0)).slots_held == 0


def test_nowait_and_tail_duplicates_give_their_slot_back_at_once() -> None:
    reqs = [mkreq(1, "net-pf-10", MS, S, 0)]
    reqs += [mkreq(i, "net-pf-10", i * MS, S, 0, wait=False) for i in range(2, 70)]
    m = Model(PROFILE_6_1)
    run = replay(m, reqs)
    # each finds the anchor and nothing else: dups returned 0 to the nowait ones at once
    assert {run.reqs[i].slots_held for i in range(2, 70)} == {1}, KMOD
    tail = [mkreq(i, "net-pf-10", 2 * S + i * MS, 3 * S, 0) for i in range(100, 170)]
    run = replay(m, tail)  # in the 60 s tail: dup_ret read without sleeping
    assert max(v.slots_held or 0 for v in run.reqs.values()) == 0
    assert m.modules()["net-pf-10"].would_queue == 0


# ---- bounded state --------------------------------------------------------------------------


def test_state_is_bounded_and_expires_to_zero() -> None:
    m = Model(PROFILE_6_5, tail_ns=1_000)
    peak: dict[str, int] = {}
    rid = 0
    for cycle in range(40):
        base = cycle * 10_000
        reqs, loads = [], []
        for k in range(5):
            name = f"mod{k}"
            for j in range(4):
                rid += 1
                reqs.append(mkreq(rid, f"fs-{name}", base + j, base + 50 + j, 0))
                loads.append(mkload(rid, base + 10 + j, base + 40, 0 if j == 0 else
                                    -errno.EEXIST, name=name, ino=k + 1))  # fmt: skip
        replay(m, reqs, loads)
        for key, size in m.state_sizes().items():
            peak[key] = max(peak.get(key, 0), size)
    # Nothing in flight; only entries still in their tail remain, then expire clears them.
    assert m.state_sizes()["pending_requests"] == 0
    assert m.state_sizes()["entries"] == 5
    assert peak["entries"] <= 5 and peak["expiry_queue"] <= 5
    m.expire(10**12)
    assert m.state_sizes() == {
        "entries": 0, "expiry_queue": 0, "pending_requests": 0, "pending_loads": 0,
        "inode_winners": 0, "loads_active": 0, "throttle_slots": 0,
    }  # fmt: skip
    # Stats are aggregated, not lost.
    assert m.modules()["fs-mod0"].requests == 160
    assert m.modules()["fs-mod0"].firsts == 40


def test_arrival_expires_old_entries_implicitly() -> None:
    m = Model(PROFILE_6_1, tail_ns=100)
    replay(m, [mkreq(i, f"n{i}", i, i + 10, 0) for i in range(1, 50)])
    assert m.state_sizes()["entries"] == 49
    m.request_arrive(mkreq(100, "other", 10_000, 10_010, 0))
    assert m.state_sizes()["entries"] == 1
    assert m.state_sizes()["expiry_queue"] == 0


def test_sweep_forgets_loads_whose_exit_was_lost() -> None:
    m = Model(PROFILE_6_5, stale_ns=10 * S)
    m.load_start(mkload(1, 0, 1, 0))
    assert m.state_sizes()["inode_winners"] == 1
    m.load_start(mkload(2, 20 * S, 20 * S + 5, 0))  # a new winner, not a waiter
    v = m.load_done(mkload(2, 20 * S, 20 * S + 5, 0))
    assert (v.would_converge, v.outcome) == (False, "loaded")
    assert m.state_sizes()["pending_loads"] == 0


# ---- properties -----------------------------------------------------------------------------

NAMES = ("fs-a", "fs-b", "net-pf-9")
TAIL = 40  # even: with even arrivals and odd returns, no event ties an expiry

req_spec = st.tuples(
    st.sampled_from(NAMES),
    st.booleans(),  # wait
    st.integers(0, 30),  # duration
    st.sampled_from([0, 256, -errno.ENOENT, 1]),
)


def build(specs: Sequence[tuple[str, bool, int, int]], gaps: Sequence[int]) -> list[Request]:
    t = 0
    out = []
    for i, ((name, wait, dur, ret), gap) in enumerate(zip(specs, gaps, strict=False), start=1):
        t += 2 * gap
        out.append(mkreq(i, name, t, t + 2 * dur + 1, ret, wait=wait))
    return out


timelines = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(req_spec, min_size=n, max_size=n),
        st.lists(st.integers(0, 15), min_size=n, max_size=n),
    )
)


def first_completion(reqs: Sequence[Request], verdicts: dict[int, RequestVerdict],
                     anchor: Request) -> Request:  # fmt: skip
    """The request whose announce completed `anchor`'s entry: the earliest return after the
    anchor's arrival among same-name requests that ran modprobe (first or untracked)."""
    assert anchor.tp_ns is not None
    cands = [
        r for r in reqs
        if r.name == anchor.name and verdicts[r.id].verdict in ("first", "untracked")
        and r.end_ns is not None and r.end_ns > anchor.tp_ns
    ]  # fmt: skip
    return min(cands, key=lambda r: (r.end_ns or 0, r.id))


@settings(max_examples=300, deadline=None)
@given(timelines, st.sampled_from(ANNOUNCES))
def test_property_dups_semantics(
    tl: tuple[list[tuple[str, bool, int, int]], list[int]], announce: Announce
) -> None:
    reqs = build(*tl)
    profile = Profile("p", dups=False, idempotent=False, patient=True, announce=announce)
    m = Model(profile, tail_ns=TAIL)
    run = replay(m, reqs)
    v = run.reqs
    by_id = {r.id: r for r in reqs}
    # While an entry lives (anchor arrival to completion + tail) nothing else of that name
    # would run modprobe: every arrival in the window is a duplicate of that anchor.
    for a in reqs:
        if v[a.id].verdict != "first":
            assert not (v[a.id].verdict == "untracked" and a.wait)
            continue
        done = first_completion(reqs, v, a)
        assert done.end_ns is not None and a.tp_ns is not None
        for r in reqs:
            assert r.tp_ns is not None
            if r.name == a.name and a.tp_ns < r.tp_ns < done.end_ns + TAIL:
                assert (v[r.id].verdict, v[r.id].anchor_id) == ("duplicate", a.id)
                if not r.wait:
                    assert (v[r.id].predicted_ret, v[r.id].would_wait_ns) == (0, 0)
                elif r.tp_ns < done.end_ns or announce == "first":
                    # Woken by (or after, with later announces ignored) the first announce.
                    assert v[r.id].predicted_ret == done.ret
                    assert v[r.id].would_wait_ns == max(0, done.end_ns - r.tp_ns)
                else:  # deferred: the latest announce before it arrived
                    last = max(
                        (x for x in reqs if x.name == a.name and x.end_ns is not None
                         and done.end_ns <= x.end_ns < r.tp_ns
                         and v[x.id].verdict in ("first", "untracked")),
                        key=lambda x: (x.end_ns or 0, x.id),
                    )  # fmt: skip
                    assert v[r.id].predicted_ret == last.ret
    # A duplicate always points at a wait request that was first.
    for r in reqs:
        if v[r.id].verdict == "duplicate":
            anchor = v[r.id].anchor_id
            assert anchor is not None and v[anchor].verdict == "first"
            assert by_id[anchor].wait
    # Counts add up.
    mods = m.modules()
    for name in {r.name for r in reqs}:
        mine = [v[r.id] for r in reqs if r.name == name]
        s = mods[name]
        assert s.requests == len(mine) == s.firsts + s.duplicates + s.untracked
        assert s.firsts == sum(x.verdict == "first" for x in mine)
        assert s.duplicates == sum(x.verdict == "duplicate" for x in mine)
        assert s.modprobe_needed == s.firsts + s.untracked
        assert s.extra_modprobe == s.duplicates  # every request here ran one
        assert s.dup_wait_ns == sum(x.would_wait_ns or 0 for x in mine)
    assert all(x.predicted_ret is not None for x in v.values())
    assert m.state_sizes()["pending_requests"] == 0


@settings(max_examples=200, deadline=None)
@given(timelines)
def test_property_wait_duplicates_get_their_anchors_ret(
    tl: tuple[list[tuple[str, bool, int, int]], list[int]],
) -> None:
    specs = [(name, True, dur, ret) for name, _, dur, ret in tl[0]]  # wait requests only
    reqs = build(specs, tl[1])
    m = Model(PROFILE_6_1, tail_ns=TAIL)
    v = replay(m, reqs).reqs
    rets = {r.id: r.ret for r in reqs}
    for x in v.values():
        if x.verdict == "duplicate":
            assert x.anchor_id is not None
            assert x.predicted_ret == rets[x.anchor_id]
    # At most one live entry per name: firsts of a name never overlap their windows.
    for name in NAMES:
        firsts = sorted((r for r in reqs if r.name == name and v[r.id].verdict == "first"),
                        key=lambda r: r.tp_ns or 0)  # fmt: skip
        for a, b in itertools.pairwise(firsts):
            assert a.end_ns is not None and b.tp_ns is not None
            assert b.tp_ns >= a.end_ns + TAIL


load_spec = st.tuples(
    st.integers(1, 3),  # inode
    st.sampled_from(["finit_module", "init_module"]),
    st.integers(0, 20),  # gap
    st.integers(0, 30),  # duration
)


@settings(max_examples=200, deadline=None)
@given(st.lists(load_spec, min_size=1, max_size=30))
def test_property_idempotent_winners_never_overlap(
    specs: list[tuple[int, str, int, int]],
) -> None:
    t = 0
    loads = []
    for i, (ino, syscall, gap, dur) in enumerate(specs, start=1):
        t += 2 * gap
        loads.append(mkload(i, t, t + 2 * dur + 1, 0, ino=ino, syscall=syscall,
                            name=f"m{ino}", loaded=False))  # fmt: skip
    m = Model(PROFILE_6_5)
    v = replay(m, loads=loads).loads
    by_id = {ld.id: ld for ld in loads}
    for ld in loads:
        x = v[ld.id]
        if ld.syscall == "init_module":
            assert not x.would_converge and not x.converged
            continue
        if x.would_converge:
            assert x.winner_id is not None
            w = by_id[x.winner_id]
            assert w.inode == ld.inode and not v[w.id].would_converge
            assert w.end_ns is not None
            assert w.start_ns <= ld.start_ns < w.end_ns  # arrived while the winner ran
            assert (x.outcome, x.converged) == ("loaded", True)  # the winner's ret, 0
    winners = [ld for ld in loads if ld.syscall == "finit_module" and not v[ld.id].would_converge]
    for a in winners:
        for b in winners:
            if a.id < b.id and a.inode == b.inode:
                assert a.end_ns is not None
                assert b.start_ns >= a.end_ns  # no two winners of one inode at once
    assert m.state_sizes()["inode_winners"] == 0
