"""kernel/module/dups.c (CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS): entries, announce, tail, ties.

Always simulated: every request gets the verdict a kernel with the option would give it.
On a kernel that has it (``profile.dups``) the verdict is a prediction of what it did.

Timing the trace cannot see, and what the model does about it:

* The announce happens when a first or untracked request returns: call_modprobe() calls
  kmod_dup_request_announce() just before __request_module() returns; where the kernel's
  own announce was traced (Kind.DUP_ANNOUNCE, Request.kernel_announce_ns) that time is
  used. Duplicates never announce (they return before call_modprobe()).
* The completion is taken to run at the first announce (the deferred form's work item
  latency is not modelled), so waiters asleep then get its ret in both forms. Only a wait
  duplicate arriving in the tail after a later announce depends on the form: "deferred"
  (6.4 on) gives it the latest announce's ret, "first" (the refcount rework, 7.2 on) the
  first one's. tracer/kernel.py dups_form() tells them apart; where the form was assumed
  such a verdict is marked indeterminate "announce-assumed".
* Two arrivals the trace cannot order at kmod_dup_mutex ("tie", see unordered()): where
  dups.c was traced, a later request entering kmod_dup_request_exists_wait() before the
  earlier one returned from it; elsewhere, two tracepoints closer than TIE_NS. A request
  inside the delete timer's slack after the tail ("tail-boundary"). With the kernel's own
  verdict (the oracle) it decides; without, the model's guess (the arrival order) stands.

The throttle slot a sleeping wait duplicate keeps is counted in throttle.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from tracer.model.counters import Tallies, Tally
from tracer.model.profile import NS_PER_S, Profile
from tracer.stories import Request

Verdict = Literal["first", "duplicate", "untracked", "rejected"]

# dups.c: kmod_dup_request_complete() queues delete_work 60 * HZ after completion.
DUP_TAIL_NS: Final = 60 * NS_PER_S
# Two arrivals for one name this close: their order at kmod_dup_mutex is not observable.
TIE_NS: Final = 200_000
_INF: Final = float("inf")


def unordered(earlier: Request, earlier_ns: int, t: int) -> bool:
    """Whether a request arriving at T, after EARLIER (which arrived at EARLIER_NS), may
    have taken kmod_dup_mutex before it.

    Where dups.c was traced, EARLIER's window [DUP_ENTER, DUP_VERDICT] decides: the kprobe
    fires before the entry's allocation and the mutex, the kretprobe after the unlock, so
    an arrival after the window came later at the mutex, and one inside it may have come
    first however late in it. Events reach the model in time order, so a window with no
    DUP_VERDICT yet is still open (one whose verdict was lost closes at the return). This
    subsumes TIE_NS there: arrivals 200 us apart in one window are a tie, and two a few
    microseconds apart across a closed window are ordered. Without dups.c (or where its
    events were lost) only the tracepoints are known: closer than TIE_NS is a tie."""
    end = earlier.dup_verdict_ns
    if end is None and earlier.dup_enter_ns is not None:
        end = earlier.end_ns
        if end is None:
            return True
    if end is not None:
        return t < end
    return t - earlier_ns < TIE_NS


@dataclass(slots=True)
class RequestVerdict:
    """The dups.c verdict for one request.

    Returned by request_arrive() and, the same object, by request_done(). A wait duplicate
    whose entry has not completed yet has predicted_ret and would_wait_ns None; they are
    filled in place when the entry completes (the first announce).
    """

    req_id: int
    name: str
    wait: bool
    verdict: Verdict
    arrive_ns: int | None  # req.tp_ns; None for rejected requests
    anchor_id: int | None = None  # duplicates: the wait request whose entry it found
    # Return value under dups: a duplicate gets the entry's dup_ret (0 if nowait); a first
    # or untracked request runs modprobe itself, so its own actual ret.
    predicted_ret: int | None = None
    would_wait_ns: int | None = None  # entry completion - arrival; 0 for nowait/tail dups
    modprobe_saved: bool = False  # a duplicate that on the actual kernel ran modprobe
    actual_ret: int | None = None
    done: bool = False  # request_done() seen
    # Only when actual.dups: whether the kernel did what the model predicts (the duplicate
    # returned predicted_ret without modprobe; a first/untracked one ran modprobe).
    oracle_agrees: bool | None = None
    # Where the verdict rests on what the trace cannot show: "tie", "tail-boundary" (see
    # the module docstring) or "announce-assumed" (the value depends on the assumed form).
    indeterminate: str | None = None
    decided_by_kernel: bool = False  # the oracle's verdict replaced the model's guess
    # kmod throttle slots held under simulated dups when it entered __request_module()
    # (throttle.py); 50 or more: it would have queued for one.
    slots_held: int | None = None


def kernel_disagrees(req: Request, v: RequestVerdict | None) -> bool:
    """The kernel's traced verdict (DUP_VERDICT) differs from the model's."""
    kv = req.kernel_verdict
    if kv is None or v is None or v.verdict == "rejected":
        return False
    if kv != v.verdict:
        return True
    return kv == "duplicate" and v.predicted_ret is not None and v.predicted_ret != req.kernel_ret


class _Entry:
    """struct kmod_dup_req (dups.c): one tracked request string."""

    __slots__ = ("anchor_id", "anchor_req", "anchor_v", "created_ns", "done_ns", "dup_ret",
                 "first_ret", "name", "tally", "waiters")

    def __init__(self, name: str, anchor: Request, anchor_v: RequestVerdict, created_ns: int,
                 tally: Tally) -> None:  # fmt: skip
        self.name = name
        self.anchor_id = anchor_v.req_id
        self.anchor_req = anchor  # its dups.c window, for ties with later arrivals
        self.anchor_v = anchor_v
        self.created_ns = created_ns
        self.done_ns: int | None = None  # first_req_done completed at
        self.dup_ret = 0  # the latest announce's ret (the deferred form keeps overwriting)
        self.first_ret = 0  # the first announce's ret (what the "first" form keeps)
        self.waiters: list[RequestVerdict] = []  # wait duplicates asleep on the completion
        self.tally = tally


class Dups:
    """dup_kmod_reqs and the verdicts of kmod_dup_request_exists_wait()."""

    def __init__(self, actual: Profile, tail_ns: int, tallies: Tallies,
                 oracle: Callable[[Request], bool | None] | None) -> None:  # fmt: skip
        self.actual = actual
        self.tail_ns = tail_ns
        # delete_work is delayed work queued for 60 s: the timer wheel fires it up to 1/8
        # of the timeout late (its bucket granularity at that level).
        self.slack_ns = tail_ns // 8
        self.oracle = oracle
        self.tallies = tallies
        self.entries: dict[str, _Entry] = {}  # by exact request string
        # (expiry, name, entry) in completion order; completion times arrive in order
        self.expiry: deque[tuple[int, str, _Entry]] = deque()
        self.next_expiry: float = _INF
        # untracked nowait requests a later wait request may still tie with (unordered())
        self._recent_untracked: deque[tuple[int, str, Request, RequestVerdict]] = deque()

    # ---- arrival: kmod_dup_request_exists_wait() -----------------------------------------

    def arrive(self, req: Request, t: int, tally: Tally) -> RequestVerdict:
        name = req.name
        ent = self.entries.get(name)
        indeterminate: str | None = None
        kernel_kept_entry = False
        if ent is not None and ent.done_ns is not None and ent.done_ns + self.tail_ns <= t:
            in_slack = t < ent.done_ns + self.tail_ns + self.slack_ns
            indeterminate = "tail-boundary" if in_slack else None
            ent, kernel_kept_entry = self._past_tail(req, ent, in_slack)
        elif ent is not None and ent.anchor_v.arrive_ns is not None \
                and unordered(ent.anchor_req, ent.anchor_v.arrive_ns, t):
            indeterminate = "tie"
            swapped = self._tie(req, ent, t, tally)
            if swapped is not None:
                return swapped
        if ent is None:
            v = self._no_entry(req, t, tally)
        else:
            v = self._duplicate(req, ent, t, tally)
            if indeterminate is None:
                indeterminate = v.indeterminate
        v.indeterminate, v.decided_by_kernel = indeterminate, kernel_kept_entry
        return v

    def _past_tail(self, req: Request, ent: _Entry, in_slack: bool) -> tuple[_Entry | None, bool]:
        """delete_work is due. Past the timer's slack it has surely run; inside it, only the
        kernel knows: the model takes it as run unless the oracle says the entry was found."""
        if in_slack and self._oracle_says(req) is True:
            return ent, True
        del self.entries[req.name]
        return None, False

    def _tie(self, req: Request, ent: _Entry, t: int, tally: Tally) -> RequestVerdict | None:
        """REQ arrived while the anchor's window was open (or microseconds after its
        tracepoint): the oracle may say REQ took kmod_dup_mutex first. Returns the verdict
        when it did."""
        if self._oracle_says(req) is not False:
            return None
        if not req.wait:  # the nowait went first: no entry yet, so it was not tracked
            v = RequestVerdict(req.id, req.name, False, "untracked", t)
            tally.c.untracked += 1
        else:  # this request anchors the entry; the old anchor becomes a waiter
            old = ent.anchor_v
            old.verdict, old.anchor_id, old.indeterminate = "duplicate", req.id, "tie"
            ent.waiters.append(old)
            tally.c.duplicates += 1
            v = RequestVerdict(req.id, req.name, True, "first", t)
            ent.anchor_id, ent.anchor_req, ent.anchor_v = req.id, req, v
        v.indeterminate, v.decided_by_kernel = "tie", True
        return v

    def _no_entry(self, req: Request, t: int, tally: Tally) -> RequestVerdict:
        if req.wait:  # the first request_module(): add an entry, run modprobe
            v = RequestVerdict(req.id, req.name, True, "first", t)
            self.entries[req.name] = _Entry(req.name, req, v, t, tally)
            tally.c.firsts += 1
            self._retro_ties(req.name, req.id, t, tally)
        else:  # request_module_nowait() with no entry: "cannot track duplicates"
            v = RequestVerdict(req.id, req.name, False, "untracked", t)
            tally.c.untracked += 1
            self._recent_untracked.append((t, req.name, req, v))
        return v

    def _duplicate(self, req: Request, ent: _Entry, t: int, tally: Tally) -> RequestVerdict:
        tally.c.duplicates += 1
        if not req.wait:  # nowait duplicate: *dup_ret = 0, back at once
            return RequestVerdict(req.id, req.name, False, "duplicate", t, ent.anchor_id, 0, 0)
        if ent.done_ns is None:  # wait_for_completion_state(&first_req_done)
            v = RequestVerdict(req.id, req.name, True, "duplicate", t, ent.anchor_id)
            ent.waiters.append(v)
            return v
        # Completed already: dup_ret is read at once, its value set by the announce form.
        ret = ent.dup_ret if self.actual.announce == "deferred" else ent.first_ret
        v = RequestVerdict(req.id, req.name, True, "duplicate", t, ent.anchor_id, ret, 0)
        if ent.dup_ret != ent.first_ret and self.actual.announce_source == "assumed":
            v.indeterminate = "announce-assumed"
        return v

    def _retro_ties(self, name: str, anchor: int, t: int, tally: Tally) -> None:
        """A wait request anchors NAME: nowait ones before it whose window it entered may
        have come after it at kmod_dup_mutex, making them duplicates (returning 0) instead
        of untracked."""
        recent = self._recent_untracked
        while recent and not unordered(recent[0][2], recent[0][0], t):
            recent.popleft()
        for nw_t, nw_name, nw_req, nw_v in recent:
            if nw_name != name or nw_v.verdict != "untracked" or not unordered(nw_req, nw_t, t):
                continue
            nw_v.indeterminate = "tie"
            if self._oracle_says(nw_req) is True:
                nw_v.verdict, nw_v.anchor_id = "duplicate", anchor
                nw_v.decided_by_kernel = True
                nw_v.predicted_ret, nw_v.would_wait_ns = 0, 0
                tally.c.untracked -= 1
                tally.c.duplicates += 1

    def _oracle_says(self, req: Request) -> bool | None:
        """The kernel's verdict for REQ (True: duplicate), where it was traced."""
        return None if self.oracle is None else self.oracle(req)

    # ---- completion: kmod_dup_request_announce() -----------------------------------------

    def announce(self, name: str, ret: int, t: int) -> list[RequestVerdict]:
        """Matches by name only: an untracked request's announce completes a wait entry.
        Returns the waiters it woke."""
        ent = self.entries.get(name)
        if ent is None:
            return []
        if ent.done_ns is not None:
            if ent.done_ns + self.tail_ns <= t:
                del self.entries[name]
            else:
                # deferred (6.4 on): kmod_dup_request_announce() sets dup_ret = ret again
                # and queue_work(complete_work) again (a no-op for waiters; the pending
                # delete_work stays where the first completion queued it).
                # first (7.2 on): "if (!kmod_req || completion_done(...)) return;", so
                # dup_ret keeps the first ret: first_ret holds it, and _duplicate() reads
                # the one the form keeps.
                ent.dup_ret = ret
            return []
        # First announce: dup_ret = ret; complete_all() (deferred: from complete_work, not
        # timed here; first: inside kmod_dup_mutex); delete_work queued for tail_ns.
        ent.dup_ret = ent.first_ret = ret
        ent.done_ns = t
        oracle = self.actual.dups
        for w in ent.waiters:
            assert w.arrive_ns is not None
            w.predicted_ret = ret
            # max: a traced announce can precede the return that reported it
            w.would_wait_ns = wait = max(0, t - w.arrive_ns)
            ent.tally.c.dup_wait_ns += wait
            if oracle and w.done:
                w.oracle_agrees = not w.modprobe_saved and w.actual_ret == ret
        woken, ent.waiters = ent.waiters, []
        expiry = t + self.tail_ns + self.slack_ns  # kept through the timer's slack
        self.expiry.append((expiry, name, ent))
        self.next_expiry = min(self.next_expiry, expiry)
        return woken

    # ---- removal: kmod_dup_request_delete() ----------------------------------------------

    def expire(self, now_ns: int) -> None:
        q = self.expiry
        while q and q[0][0] <= now_ns:
            _, name, ent = q.popleft()
            if self.entries.get(name) is ent:
                del self.entries[name]
        self.next_expiry = q[0][0] if q else _INF

    def sweep(self, before: int) -> None:
        """Forget entries whose anchor never returned, and nowait requests whose window
        never closed (lost events)."""
        for name, ent in list(self.entries.items()):
            if ent.done_ns is None and ent.created_ns < before:
                del self.entries[name]
        recent = self._recent_untracked
        while recent and recent[0][0] < before:
            recent.popleft()
