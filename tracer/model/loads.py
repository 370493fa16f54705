"""Concurrent loads: idempotent() and module_patient_check_exists() in kernel/module/main.c.

* idempotent() (6.5+): finit_module() callers keyed by inode; whoever arrives while the
  first runs waits and returns its exact ret, with no read and no allocation. Always
  simulated as ``would_converge``; it decides the actual outcome only when
  ``actual.idempotent``.
* module_patient_check_exists(): a same-name module loading or LIVE makes the attempt
  fail -EEXIST/-EBUSY, in early_mod_check() ("Becoming", before layout_and_allocate(),
  6.4+) or in add_unformed_module() ("Load", after it). Which call failed is not visible:
  "Becoming" if a same-name load was in flight or the module LIVE when the attempt started
  (or its name was unknown then), otherwise "Load" (a later starter overtook it).
* Modules seen LIVE stay LIVE (module_free is not an input here).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

from tracer.model.counters import Tallies, Tally
from tracer.model.profile import Profile
from tracer.model.stats import ByteClass, ModStats, failure_phase, reached_load_module, wasted
from tracer.stories import Load

Rule = Literal["idempotent", "patient-becoming", "patient-load", "exists"]


@dataclass(frozen=True, slots=True)
class LoadVerdict:
    """One finit_module()/init_module() attempt judged."""

    load_id: int
    module: str
    syscall: str
    ret: int | None
    # "loaded", "EEXIST", "EBUSY", another errno name, or "unknown" (no ret recorded). An
    # idempotent() waiter's is the winner's: it failed or loaded as the winner did.
    outcome: str
    rule: Rule | None  # which kernel check produced the outcome
    wasted_bytes: int  # MODULE_STATS bytes this attempt wasted on the actual kernel
    winner_id: int | None  # the same-inode finit_module in flight when this one started
    would_converge: bool  # a kernel with idempotent() would have made it wait for winner_id
    bytes_saved: int  # wasted_bytes that idempotent() would have saved
    byte_class: ByteClass | None = None  # the stats.c counter wasted_bytes went to
    wasted_approx: bool = False  # the errno left the failing phase ambiguous
    # An idempotent() waiter handed the winner's ret (outcome), with no read, 0 bytes.
    converged: bool = False
    # MODULE_STATS charged len, but module_sig_check()'s return was not seen (a missed
    # kretprobe, a full map): the size on disk stood for info->len.
    len_unknown: bool = False


def _outcome(ret: int | None) -> str:
    """A return value as a verdict: "loaded", an errno name, or "unknown"."""
    if ret is None:
        return "unknown"
    return "loaded" if ret == 0 else errno.errorcode.get(-ret, str(ret))


class _Winner:
    """struct idempotent (main.c) of the finit_module() that got to do the load."""

    __slots__ = ("done", "load_id", "ret")

    def __init__(self, load_id: int) -> None:
        self.load_id = load_id
        self.ret: int | None = None
        self.done = False


class PendingLoad:
    __slots__ = ("inode", "name", "own", "rival_before", "start_ns", "tally", "waiter_of")

    def __init__(self, name: str, start_ns: int, inode: tuple[int, int] | None,
                 own: _Winner | None, waiter_of: _Winner | None, rival_before: bool | None,
                 tally: Tally | None) -> None:  # fmt: skip
        self.name = name
        self.start_ns = start_ns
        self.inode = inode
        self.own = own  # set when this load is the inode's winner
        self.waiter_of = waiter_of  # set when a same-inode winner was in flight
        self.rival_before = rival_before  # same name loading or loaded at start; None: unknown
        self.tally = tally  # None when the name was unknown at start (init_module)


@dataclass(frozen=True, slots=True)
class _Judged:
    outcome: str
    rule: Rule | None = None
    read: bool = True  # the attempt read the file (an extra read if it failed)
    converged: bool = False  # an idempotent() waiter: outcome is the winner's ret


class Loads:
    def __init__(self, actual: Profile, tallies: Tallies, stats: ModStats) -> None:
        self.actual = actual
        self.tallies = tallies
        self.stats = stats
        self.pending: dict[int, PendingLoad] = {}
        self.winners: dict[tuple[int, int], _Winner] = {}  # main.c idem_hash, by inode
        self.active: dict[str, int] = {}  # in-flight loads per module name
        self.live: set[str] = set()  # names seen loaded (LIVE); unloads are not traced

    def start(self, load: Load) -> None:
        """At syscall entry: idempotent() by inode, and the same-name state the patient
        check will find."""
        t = load.start_ns
        key = load.inode  # None for init_module(): it never converges
        own: _Winner | None = None
        waiter_of: _Winner | None = None
        if key is not None:
            waiter_of = self.winners.get(key)
            if waiter_of is None:
                own = self.winners[key] = _Winner(load.id)
        tally: Tally | None = None
        rival: bool | None = None
        name = load.module
        if name:
            tally = self.tallies[name]
            tally.race.arrive(t)
            n = self.active.get(name, 0)
            rival = n > 0 or name in self.live
            self.active[name] = n + 1
        self.pending[load.id] = PendingLoad(name, t, key, own, waiter_of, rival, tally)

    def done(self, load: Load) -> LoadVerdict:
        """At syscall exit: judge the outcome, charge what it cost, count it."""
        p, end = self._finish(load)
        name, tally = self._tally_of(load, p, end)
        judged = self._judge(load, p)
        byte_class, approx, read = self._byte_class(load, judged)
        cost = self._charge(load, byte_class, approx)
        # stats.c charged info->len, which only module_sig_check()'s return shows
        len_unknown = load.mod_len is None and byte_class in ("becoming", "invalid")
        self.stats.len_unknown += len_unknown
        if judged.rule is not None and judged.rule != "idempotent":
            # try_add_failed_module(); the attempt's run time was avoidable work
            reason = "Becoming" if judged.rule == "patient-becoming" else "Load"
            self.stats.add_dup_failed(name, reason)
            tally.c.extra_ns += end - p.start_ns
        winner = p.waiter_of
        saved = cost if winner is not None else 0
        self.stats.saved_bytes += saved
        self._count(tally, name, judged, read, cost, saved, winner is not None)
        return LoadVerdict(
            load.id, name, load.syscall, load.ret, judged.outcome, judged.rule, cost,
            winner.load_id if winner is not None else None, winner is not None, saved,
            byte_class, approx, judged.converged, len_unknown,
        )  # fmt: skip

    def _finish(self, load: Load) -> tuple[PendingLoad, int]:
        """The attempt leaves the in-flight state; its winner hands waiters its ret."""
        p = self.pending.pop(load.id, None)
        if p is None:  # start not seen: replay it now
            self.start(load)
            p = self.pending.pop(load.id)
        end = load.end_ns if load.end_ns is not None else p.start_ns
        if p.own is not None:  # idempotent_complete(): waiters get ret, no tail
            p.own.ret, p.own.done = load.ret, True
        self.forget(p, end)
        return p, end

    def _tally_of(self, load: Load, p: PendingLoad, end: int) -> tuple[str, Tally]:
        """The name the kernel gave it (init_module: known only at exit) and its counters."""
        name = load.module or p.name
        if p.tally is not None and p.name == name:
            return name, p.tally
        tally = self.tallies[name]
        if p.tally is None:
            tally.race.late(p.start_ns, end)
        return name, tally

    def _charge(self, load: Load, byte_class: ByteClass | None, approx: bool) -> int:
        """stats.c: the bytes the failure adds to its counter."""
        if byte_class is None:
            self.stats.approximate += approx  # it may have counted a failed read
            return 0
        cost = wasted(load, byte_class)
        self.stats.bump(byte_class, cost, approx)
        return cost

    def _judge(self, load: Load, p: PendingLoad) -> _Judged:
        """The outcome and the kernel check that produced it."""
        ret, winner = load.ret, p.waiter_of
        waited = (self.actual.idempotent and winner is not None and not load.loaded
                  and (ret == winner.ret or not winner.done))
        if waited and ret == -errno.EINTR and winner is not None and winner.ret != ret:
            # idempotent_wait_for_completion() interrupted: u->ret is still -EINTR.
            return _Judged("EINTR", "idempotent", read=False)
        if waited:
            # idempotent_wait_for_completion() returns u->ret, the winner's exact return
            # (main.c, 9b9879fc0327): the waiter failed or loaded as the winner did, with
            # no read and no allocation.
            return _Judged(_outcome(ret), "idempotent", read=False, converged=ret is not None)
        if ret is None or ret == 0:
            return _Judged(_outcome(ret), read=ret is not None)
        outcome = _outcome(ret)
        if not load.loaded and -ret in (errno.EEXIST, errno.EBUSY):
            return _Judged(outcome, self._patient_rule(load, p))
        return _Judged(outcome)

    def _patient_rule(self, load: Load, p: PendingLoad) -> Rule:
        """Which module_patient_check_exists() call failed the attempt."""
        if not self.actual.patient:
            return "exists"  # before 6.4 only add_unformed_module() checks, after layout
        if load.patient_check is not None:
            # Traced: the last check called is the one that refused it. Several loads
            # can pass early_mod_check() together and meet in add_unformed_module(),
            # which no start order shows.
            return "patient-becoming" if load.patient_check == "Becoming" else "patient-load"
        # Name unknown at start (init_module): assume the usual case, the early check.
        rival = True if p.rival_before is None else p.rival_before
        return "patient-becoming" if rival else "patient-load"

    def _byte_class(self, load: Load, judged: _Judged) -> tuple[ByteClass | None, bool, bool]:
        """The stats.c counter a failure bumps, whether the errno left it ambiguous, and
        whether the attempt read the whole file."""
        if judged.rule == "patient-becoming":
            return "becoming", False, True  # early_mod_check(): mod_stat_bump_becoming()
        if judged.rule in ("patient-load", "exists"):
            return "invalid", False, True  # add_unformed_module(): mod_stat_bump_invalid()
        if judged.rule is not None or load.ret is None or load.ret >= 0 or load.loaded:
            # a success, an idempotent() waiter, or a failed do_init_module(): freed with
            # no MODULE_STATS bump
            return None, False, judged.read
        reached = reached_load_module(load) if self.actual.sig_check else None
        byte_class, approx = failure_phase(load, -load.ret, reached)
        return byte_class, approx, byte_class not in (None, "kread")

    def _count(self, tally: Tally, name: str, judged: _Judged, read: bool, cost: int,
               saved: int, would_converge: bool) -> None:  # fmt: skip
        c = tally.c
        c.loads += 1
        outcome = judged.outcome
        if outcome == "loaded":
            c.loads_ok += 1
        elif outcome != "unknown":
            c.load_failures[outcome] = c.load_failures.get(outcome, 0) + 1
        if judged.converged:  # counted above as what it returned, and marked here
            c.converged += 1
            if outcome != "loaded":
                c.converged_failures[outcome] = c.converged_failures.get(outcome, 0) + 1
        if outcome in ("loaded", "EEXIST"):
            self.live.add(name)  # LIVE now, or found LIVE by the patient check
        c.reads += read
        c.would_converge += would_converge
        c.wasted_bytes += cost
        c.bytes_saved += saved

    def forget(self, p: PendingLoad, end: int) -> None:
        if p.own is not None and p.inode is not None and self.winners.get(p.inode) is p.own:
            del self.winners[p.inode]
        if p.tally is not None:
            p.tally.race.leave(end)
            left = self.active[p.name] - 1
            if left:
                self.active[p.name] = left
            else:
                del self.active[p.name]

    def sweep(self, before: int) -> None:
        for lid, p in list(self.pending.items()):
            if p.start_ns < before:
                del self.pending[lid]
                self.forget(p, before)
