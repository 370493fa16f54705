"""A pure-Python model of what the kernel does with concurrent module requests and loads.

Fed one moment at a time (live, or from a recorded trace) in timestamp order:

    request_arrive(req)   at module:module_request        (req.tp_ns, name, wait)
    request_done(req)     at the __request_module return   (req.end_ns, ret, umh_*)
    load_start(load)      at sys_enter_{finit,init}_module (start_ns, file, dev, ino, size)
    load_done(load)       at sys_exit_{finit,init}_module  (end_ns, ret, loaded, kernel_name)

What it copies (see ../shared/docs/kernel-semantics.md and the kernel files named here):

* kernel/module/dups.c (CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS) is always simulated: every
  request gets the verdict a kernel with the option would give it. On a kernel that has it
  (``actual.dups``) that verdict is a prediction of what the kernel did.
* idempotent() in kernel/module/main.c: always simulated as ``would_converge``; it decides
  the actual outcome only when ``actual.idempotent``.
* module_patient_check_exists() and MODULE_STATS (kernel/module/stats.c): used to attribute
  EEXIST/EBUSY failures and the bytes each failed attempt wasted on the actual kernel.

Keying: requests are keyed by the exact request string (``fs-xfs``, ``net-pf-10``; aliases
are not resolved, as in dups.c); loads by their kmod name (``Load.module``: dashes become
underscores). A request string that happens to equal a module name shares its ModuleStats.

Cost: O(1) amortised per event. State is the live dups entries, in-flight requests and
loads, in-flight inode winners, and aggregated counters per name; nothing grows with history
except one counter record per distinct name. Request and load ids must be unique among
those in flight (they key the arrive/done and start/done pairs).

Modelling choices where the kernel's timing cannot be seen:

* The announce happens when a first or untracked request returns (req.end_ns): dups.c
  announces from call_modprobe() just before __request_module() returns. Duplicates never
  announce (they return before call_modprobe()). On a kernel without dups, the anchor's
  actual return stands for when it would have completed.
* announce="deferred": the completion is taken to run at the first announce (the work
  item's latency is not modelled), and every later announce overwrites dup_ret for as long
  as the entry exists, as the 6.4-era kmod_dup_request_announce() does unconditionally. So
  waiters asleep at the first announce get its ret in both modes; only duplicates arriving
  after a later announce (in the tail) differ. announce="first": later announces are ignored
  (newer dups.c returns early once completion_done()).
* Patient check reason: "Becoming" if a same-name load was in flight or the module known
  LIVE when the failing attempt started (or its name was unknown then); otherwise "Load".
* MODULE_STATS len is load.size; for MODULE_INIT_COMPRESSED_FILE the decompressed length is
  not visible, so load.size stands for it too (a lower bound) and is added once more as the
  compressed length. Non-duplicate failures: -ENOENT (unknown symbol) counts as after the
  allocation, EPERM/EBADF/EFAULT/EINVAL/ETXTBSY/EFBIG as never read, the rest as before it.
  An init failure (module:module_load fired) counts nothing, as do_init_module() bumps
  nothing.
* Modules seen LIVE stay LIVE (module_free is not an input here).
* stale_ns (not the kernel's): in-flight records whose end never came are dropped after it.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from tracer.stories import Load, Request

Announce = Literal["first", "deferred"]
Verdict = Literal["first", "duplicate", "untracked", "rejected"]
Rule = Literal["idempotent", "patient-becoming", "patient-load", "exists"]

NS_PER_S: Final = 1_000_000_000
# dups.c: kmod_dup_request_complete() queues delete_work 60 * HZ after completion.
DUP_TAIL_NS: Final = 60 * NS_PER_S
# Two arrivals for one name this close: their order at kmod_dup_mutex is not observable.
TIE_NS: Final = 200_000
# include/uapi/linux/module.h: finit_module() flag, the kernel decompresses the file.
MODULE_INIT_COMPRESSED_FILE: Final = 4
# Not the kernel's: an in-flight request or load older than this is taken as a lost event
# (a missed kretprobe or ring-buffer drop) and forgotten, so state stays bounded.
DEFAULT_STALE_NS: Final = 600 * NS_PER_S

_INF: Final = float("inf")

# Load failures that never reach load_module()'s allocations: may_init_module(), flag and
# fd checks, or kernel_read_file() failures (stats.c counts those apart, we cannot see them).
_NOT_READ_ERRNOS: Final = frozenset(
    {errno.EPERM, errno.EBADF, errno.EFAULT, errno.EINVAL, errno.ETXTBSY, errno.EFBIG}
)
# Load failures known to happen after layout_and_allocate(): simplify_symbols() "Unknown
# symbol" -> -ENOENT. load_module() jumps to free_module -> mod_stat_bump_invalid().
_AFTER_ALLOC_ERRNOS: Final = frozenset({errno.ENOENT})


@dataclass(frozen=True, slots=True)
class Profile:
    """What a kernel tree does; see section 7 of kernel-semantics.md."""

    name: str  # e.g. "6.1", "6.4", "6.5+"
    dups: bool  # CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS built in (kernel/module/dups.c, 6.4+)
    idempotent: bool  # idempotent() finit_module convergence by inode (6.5+)
    patient: bool  # module_patient_check_exists early "Becoming" check (6.4+)
    # "first": newer dups.c completes on the first announce and ignores later ones.
    # "deferred": 6.4-era dups.c, every announce overwrites dup_ret and queues the completion.
    announce: Announce = "first"


PROFILE_6_1: Final = Profile("6.1", dups=False, idempotent=False, patient=False)
PROFILE_6_4: Final = Profile("6.4", dups=False, idempotent=False, patient=True, announce="deferred")
PROFILE_6_5: Final = Profile("6.5+", dups=False, idempotent=True, patient=True)


def profile_with_dups(p: Profile) -> Profile:
    """The same tree built with CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS."""
    return replace(p, dups=True)


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
    # Where the trace cannot tell the kernel's order: "tie" (another request for the name
    # arrived within TIE_NS) or "tail-boundary" (inside the delete timer's slack). With an
    # oracle the kernel's own verdict decided; without one, the model's best guess stands.
    indeterminate: str | None = None
    decided_by_kernel: bool = False  # the oracle's verdict replaced the model's guess


@dataclass(frozen=True, slots=True)
class LoadVerdict:
    """One finit_module()/init_module() attempt judged."""

    load_id: int
    module: str
    syscall: str
    ret: int | None
    # "loaded", "converged" (an idempotent() waiter), "EEXIST", "EBUSY", another errno name,
    # or "unknown" (no ret recorded).
    outcome: str
    rule: Rule | None  # which kernel check produced the outcome
    wasted_bytes: int  # MODULE_STATS bytes this attempt wasted on the actual kernel
    winner_id: int | None  # the same-inode finit_module in flight when this one started
    would_converge: bool  # a kernel with idempotent() would have made it wait for winner_id
    bytes_saved: int  # wasted_bytes that idempotent() would have saved


@dataclass(frozen=True, slots=True)
class ModuleStats:
    """Aggregated counters for one request string or module name."""

    name: str
    requests: int  # requests that reached module:module_request
    firsts: int
    duplicates: int
    untracked: int
    rejected: int  # stopped before the tracepoint (LSM, throttle, no modprobe path)
    modprobe_spawns: int  # modprobe helpers seen on the actual kernel
    modprobe_needed: int  # what dups would have run: firsts + untracked
    extra_modprobe: int  # modprobe_spawns - modprobe_needed
    dup_wait_ns: int  # sum of would_wait_ns over resolved duplicates
    loads: int  # load attempts finished
    loads_ok: int
    load_failures: dict[str, int]  # errno name -> count (not counting converged waiters)
    converged: int  # idempotent() waiters on the actual kernel
    would_converge: int  # attempts idempotent() would have turned into waiters
    wasted_bytes: int
    bytes_saved: int  # of wasted_bytes, what idempotent() would have saved
    # Largest race: a maximal group of requests/loads of this name whose [arrival, return]
    # intervals overlap (touching counts); its window is first arrival to last arrival.
    race_window_ns: int
    # Attempts that read the file, beyond the ones needed: reads - max(loads_ok, 1).
    extra_reads: int
    # Time spent on avoidable work: modprobe run time of duplicates that ran one, plus the
    # duration of load attempts that read the file and failed EEXIST/EBUSY.
    extra_ms: float


@dataclass(frozen=True, slots=True)
class DupFailed:
    """A line of the "Duplicate failed modules" table (kernel/module/stats.c)."""

    name: str
    count: int
    reason: str  # mod_fail_to_str(): "Becoming", "Load" or "Becoming & Load"


@dataclass(frozen=True, slots=True)
class StatsSummary:
    """/sys/kernel/debug/modules/stats as the actual kernel would count it."""

    # "Virtual mem wasted bytes": becoming + invalid (kread and decompress failures are not
    # visible at the syscall, so they are not counted here).
    wasted_bytes: int
    becoming_bytes: int  # invalid_becoming_bytes
    invalid_bytes: int  # invalid_mod_bytes
    failed_becoming: int  # "Mods failed on becoming"
    failed_load: int  # "Mods failed on load"
    dup_failed: dict[str, DupFailed]
    bytes_saved_idempotent: int  # what idempotent() would have saved


class _Acc:
    """Mutable per-name counters behind ModuleStats."""

    __slots__ = (
        "bytes_saved",
        "converged",
        "dup_wait_ns",
        "duplicates",
        "extra_ns",
        "firsts",
        "load_failures",
        "loads",
        "loads_ok",
        "modprobe_spawns",
        "name",
        "race_active",
        "race_end",
        "race_last",
        "race_start",
        "race_window_ns",
        "reads",
        "rejected",
        "requests",
        "untracked",
        "wasted_bytes",
        "would_converge",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.firsts = 0
        self.duplicates = 0
        self.untracked = 0
        self.rejected = 0
        self.modprobe_spawns = 0
        self.dup_wait_ns = 0
        self.loads = 0
        self.loads_ok = 0
        self.load_failures: dict[str, int] = {}
        self.converged = 0
        self.would_converge = 0
        self.reads = 0
        self.wasted_bytes = 0
        self.bytes_saved = 0
        self.extra_ns = 0
        self.race_active = 0
        self.race_start = 0
        self.race_last = 0
        self.race_end = -1  # latest return seen in the current race
        self.race_window_ns = 0

    def race_arrive(self, t: int) -> None:
        if self.race_active == 0 and t > self.race_end:
            self.race_start = self.race_last = t  # nothing overlaps: a new race
        elif t > self.race_last:
            self.race_last = t
            self.race_window_ns = max(self.race_window_ns, t - self.race_start)
        self.race_active += 1

    def race_leave(self, end: int) -> None:
        self.race_active -= 1
        self.race_end = max(self.race_end, end)

    def race_late(self, start: int, end: int) -> None:
        """Join an interval known only at its end (a load whose name came with its exit)."""
        if (self.race_active > 0 or start <= self.race_end) and end >= self.race_start:
            self.race_start = min(self.race_start, start)
            self.race_last = max(self.race_last, start)
            self.race_window_ns = max(self.race_window_ns, self.race_last - self.race_start)
        else:
            self.race_start = self.race_last = start
        self.race_end = max(self.race_end, end)

    def snapshot(self) -> ModuleStats:
        needed = self.firsts + self.untracked
        return ModuleStats(
            name=self.name,
            requests=self.requests,
            firsts=self.firsts,
            duplicates=self.duplicates,
            untracked=self.untracked,
            rejected=self.rejected,
            modprobe_spawns=self.modprobe_spawns,
            modprobe_needed=needed,
            extra_modprobe=self.modprobe_spawns - needed,
            dup_wait_ns=self.dup_wait_ns,
            loads=self.loads,
            loads_ok=self.loads_ok,
            load_failures=dict(self.load_failures),
            converged=self.converged,
            would_converge=self.would_converge,
            wasted_bytes=self.wasted_bytes,
            bytes_saved=self.bytes_saved,
            race_window_ns=self.race_window_ns,
            extra_reads=max(0, self.reads - max(self.loads_ok, 1)),
            extra_ms=self.extra_ns / 1e6,
        )


class _Entry:
    """struct kmod_dup_req (dups.c): one tracked request string."""

    __slots__ = ("acc", "anchor_id", "anchor_v", "created_ns", "done_ns", "dup_ret", "name",
                 "waiters")

    def __init__(self, name: str, anchor_id: int, created_ns: int, acc: _Acc) -> None:
        self.name = name
        self.anchor_id = anchor_id
        self.created_ns = created_ns
        self.done_ns: int | None = None  # first_req_done completed at
        self.dup_ret = 0
        self.waiters: list[RequestVerdict] = []  # wait duplicates asleep on the completion
        self.acc = acc
        self.anchor_v: RequestVerdict | None = None


class _Winner:
    """struct idempotent (main.c) of the finit_module() that got to do the load."""

    __slots__ = ("done", "load_id", "ret")

    def __init__(self, load_id: int) -> None:
        self.load_id = load_id
        self.ret: int | None = None
        self.done = False


class _DupRow:
    """struct mod_fail_load (stats.c): a count and the dup_fail_mask."""

    __slots__ = ("count", "reasons")

    def __init__(self) -> None:
        self.count = 0
        self.reasons: set[str] = set()


class _PendingLoad:
    __slots__ = ("acc", "inode", "name", "own", "rival_before", "start_ns", "waiter_of")

    def __init__(
        self,
        name: str,
        start_ns: int,
        inode: tuple[int, int] | None,
        own: _Winner | None,
        waiter_of: _Winner | None,
        rival_before: bool | None,
        acc: _Acc | None,
    ) -> None:
        self.name = name
        self.start_ns = start_ns
        self.inode = inode
        self.own = own  # set when this load is the inode's winner
        self.waiter_of = waiter_of  # set when a same-inode winner was in flight
        self.rival_before = rival_before  # same name loading or loaded at start; None: unknown
        self.acc = acc  # None when the name was unknown at start (init_module)


class Model:
    """The kernel's handling of module requests and loads; see the module docstring."""

    def __init__(
        self,
        actual: Profile,
        tail_ns: int = DUP_TAIL_NS,
        *,
        stale_ns: int | None = DEFAULT_STALE_NS,
        oracle: Callable[[Request], bool | None] | None = None,
    ) -> None:
        self.actual = actual
        self.tail_ns = tail_ns
        # dups.c deletes entries from delayed work queued for 60 s: the timer wheel fires
        # it up to 1/8 of the timeout late (its bucket granularity at that level).
        self.slack_ns = tail_ns // 8
        # The kernel's own verdict, where traced (the oracle kernel): consulted only
        # when the order of events is not observable.
        self.oracle = oracle
        # nowait requests of the last TIE_NS, for ties with a wait request after them
        self._recent_untracked: deque[tuple[int, str, Request, RequestVerdict]] = deque()
        self.stale_ns = stale_ns
        self._first_only = actual.announce == "first"
        self._acc: dict[str, _Acc] = {}
        # dups.c dup_kmod_reqs, by exact request string
        self._entries: dict[str, _Entry] = {}
        # (expiry, name, entry) in completion order; completion times arrive in order
        self._expiry: deque[tuple[int, str, _Entry]] = deque()
        self._next_expiry: float = _INF
        self._pending_reqs: dict[int, tuple[RequestVerdict, _Acc]] = {}
        self._pending_loads: dict[int, _PendingLoad] = {}
        self._winners: dict[tuple[int, int], _Winner] = {}  # main.c idem_hash by inode
        self._loads_active: dict[str, int] = {}  # in-flight loads per module name
        self._live: set[str] = set()  # names seen loaded (LIVE); unloads are not traced
        self._next_sweep: float = _INF if stale_ns is None else 0
        # MODULE_STATS counters (stats.c)
        self._becoming_bytes = 0
        self._invalid_bytes = 0
        self._failed_becoming = 0
        self._failed_load = 0
        self._saved_bytes = 0
        self._dup_failed: dict[str, _DupRow] = {}

    # ---- bookkeeping -------------------------------------------------------------------

    def _stats_for(self, name: str) -> _Acc:
        acc = self._acc.get(name)
        if acc is None:
            acc = self._acc[name] = _Acc(name)
        return acc

    def expire(self, now_ns: int) -> None:
        """Drop dups entries whose tail ended (dups.c kmod_dup_request_delete()) and, after
        stale_ns, in-flight records whose end was never seen."""
        q = self._expiry
        while q and q[0][0] <= now_ns:
            _, name, ent = q.popleft()
            if self._entries.get(name) is ent:
                del self._entries[name]
        self._next_expiry = q[0][0] if q else _INF
        if now_ns >= self._next_sweep and self.stale_ns is not None:
            self._sweep(now_ns - self.stale_ns)
            self._next_sweep = now_ns + max(1, self.stale_ns // 2)

    def _sweep(self, before: int) -> None:
        """Forget what started before `before` and never ended: O(in flight)."""
        for rid, (v, acc) in list(self._pending_reqs.items()):
            if v.arrive_ns is None or v.arrive_ns < before:
                del self._pending_reqs[rid]
                acc.race_leave(before)
        for name, ent in list(self._entries.items()):
            if ent.done_ns is None and ent.created_ns < before:
                del self._entries[name]
        for lid, p in list(self._pending_loads.items()):
            if p.start_ns < before:
                del self._pending_loads[lid]
                self._forget_load(p, before)

    def _forget_load(self, p: _PendingLoad, end: int) -> None:
        if p.own is not None and p.inode is not None and self._winners.get(p.inode) is p.own:
            del self._winners[p.inode]
        if p.acc is not None:
            p.acc.race_leave(end)
            left = self._loads_active[p.name] - 1
            if left:
                self._loads_active[p.name] = left
            else:
                del self._loads_active[p.name]

    def state_sizes(self) -> dict[str, int]:
        """Sizes of the transient state; all 0 once everything ended and expired."""
        return {
            "entries": len(self._entries),
            "expiry_queue": len(self._expiry),
            "pending_requests": len(self._pending_reqs),
            "pending_loads": len(self._pending_loads),
            "inode_winners": len(self._winners),
            "loads_active": len(self._loads_active),
        }

    # ---- requests: kernel/module/kmod.c + dups.c -----------------------------------------

    def request_arrive(self, req: Request) -> RequestVerdict:
        """At module:module_request: kmod_dup_request_exists_wait()."""
        t = req.tp_ns
        name = req.name
        if t is None:  # never reached the tracepoint, so never reached dups.c either;
            # nothing is kept: request_done() counts it.
            return RequestVerdict(req.id, req.display_name, req.wait, "rejected", None)
        if t >= self._next_expiry or t >= self._next_sweep:
            self.expire(t)
        acc = self._stats_for(name)
        ent = self._entries.get(name)
        indeterminate = None
        kernel_kept_entry = False
        if ent is not None and ent.done_ns is not None and ent.done_ns + self.tail_ns <= t:
            # delete_work is due. Past the timer's slack it has surely run; inside it,
            # only the kernel knows: the model takes it as run unless the oracle says no.
            if t < ent.done_ns + self.tail_ns + self.slack_ns:
                indeterminate = "tail-boundary"
                if self._oracle_says(req) is not True:
                    ent = None
                else:
                    kernel_kept_entry = True
            else:
                ent = None
            if ent is None:
                del self._entries[name]
        elif (ent is not None and ent.anchor_v is not None
              and ent.anchor_v.arrive_ns is not None and t - ent.anchor_v.arrive_ns < TIE_NS):
            # Two tracepoints microseconds apart on two CPUs: which took kmod_dup_mutex
            # first is not observable. The oracle may say this one did: swap anchors.
            indeterminate = "tie"
            if self._oracle_says(req) is False and not req.wait:
                # the nowait went first: no entry yet, so it was not tracked
                v = RequestVerdict(req.id, name, False, "untracked", t)
                v.indeterminate, v.decided_by_kernel = indeterminate, True
                acc.untracked += 1
                acc.requests += 1
                acc.race_arrive(t)
                self._pending_reqs[req.id] = (v, acc)
                return v
            if self._oracle_says(req) is False:
                self._demote_anchor(ent, req.id)
                acc.duplicates += 1  # the old anchor; this request takes its place as first
                ent.anchor_id = req.id
                v = RequestVerdict(req.id, name, True, "first", t)
                ent.anchor_v = v
                v.indeterminate, v.decided_by_kernel = indeterminate, True
                acc.requests += 1
                acc.race_arrive(t)
                self._pending_reqs[req.id] = (v, acc)
                return v
        if ent is None:
            if req.wait:  # the first request_module(): add an entry, run modprobe
                ent = self._entries[name] = _Entry(name, req.id, t, acc)
                v = RequestVerdict(req.id, name, True, "first", t)
                ent.anchor_v = v
                acc.firsts += 1
                self._retro_ties(name, req.id, t, acc)
            else:  # request_module_nowait() with no entry: "cannot track duplicates"
                v = RequestVerdict(req.id, name, False, "untracked", t)
                acc.untracked += 1
                self._recent_untracked.append((t, name, req, v))
        else:
            acc.duplicates += 1
            if not req.wait:  # nowait duplicate: *dup_ret = 0, back at once
                v = RequestVerdict(req.id, name, False, "duplicate", t, ent.anchor_id, 0, 0)
            elif ent.done_ns is not None:  # completion already done: read dup_ret now
                v = RequestVerdict(
                    req.id, name, True, "duplicate", t, ent.anchor_id, ent.dup_ret, 0
                )
            else:  # wait_for_completion_state(&first_req_done)
                v = RequestVerdict(req.id, name, True, "duplicate", t, ent.anchor_id)
                ent.waiters.append(v)
        v.indeterminate, v.decided_by_kernel = indeterminate, kernel_kept_entry
        acc.requests += 1
        acc.race_arrive(t)
        self._pending_reqs[req.id] = (v, acc)
        return v

    def _retro_ties(self, name: str, anchor: int, t: int, acc: _Acc) -> None:
        """A wait request anchors NAME: nowait ones just before it may have come after it
        at kmod_dup_mutex, making them duplicates (returning 0) instead of untracked."""
        recent = self._recent_untracked
        while recent and t - recent[0][0] >= TIE_NS:
            recent.popleft()
        for _, nw_name, nw_req, nw_v in recent:
            if nw_name != name or nw_v.verdict != "untracked":
                continue
            nw_v.indeterminate = "tie"
            if self._oracle_says(nw_req) is True:
                nw_v.verdict, nw_v.anchor_id = "duplicate", anchor
                nw_v.decided_by_kernel = True
                nw_v.predicted_ret, nw_v.would_wait_ns = 0, 0
                acc.untracked -= 1
                acc.duplicates += 1

    def _oracle_says(self, req: Request) -> bool | None:
        """The kernel's verdict for REQ (True: duplicate), where it was traced."""
        return None if self.oracle is None else self.oracle(req)

    def _demote_anchor(self, ent: _Entry, new_anchor: int) -> None:
        """The kernel let another request anchor ENT: its old anchor becomes a waiter."""
        old = ent.anchor_v
        assert old is not None
        old.verdict = "duplicate"
        old.anchor_id = new_anchor
        old.indeterminate = "tie"
        ent.waiters.append(old)

    def request_done(self, req: Request) -> RequestVerdict:
        """At the __request_module return; a first or untracked request announces."""
        ret = req.ret
        ran = req.modprobe_pid is not None or req.umh_start_ns is not None
        pending = self._pending_reqs.pop(req.id, None)
        if pending is None:
            if req.tp_ns is None:  # rejected before the tracepoint: no dups.c, no helper
                v = RequestVerdict(req.id, req.display_name, req.wait, "rejected", None)
                v.actual_ret = v.predicted_ret = ret
                v.done = True
                acc = self._stats_for(v.name)
                acc.rejected += 1
                if ran:
                    acc.modprobe_spawns += 1
                return v
            self.request_arrive(req)  # arrival not seen: replay it now
            pending = self._pending_reqs.pop(req.id)
        v, acc = pending
        v.actual_ret = ret
        v.done = True
        if ran:
            acc.modprobe_spawns += 1
        verdict = v.verdict
        end = req.end_ns
        if end is None:
            end = v.arrive_ns if v.arrive_ns is not None else 0
        acc.race_leave(end)
        if verdict == "duplicate":
            if ran:
                v.modprobe_saved = True
                if req.umh_start_ns is not None and req.umh_end_ns is not None:
                    acc.extra_ns += req.umh_end_ns - req.umh_start_ns
                elif v.arrive_ns is not None:
                    acc.extra_ns += end - v.arrive_ns
            if self.actual.dups and v.predicted_ret is not None:
                v.oracle_agrees = not ran and v.predicted_ret == ret
        else:
            # It ran modprobe under dups too, so its own return is its prediction.
            v.predicted_ret = ret
            v.would_wait_ns = 0
            if self.actual.dups:
                v.oracle_agrees = ran
            # call_modprobe(): kmod_dup_request_announce(name, ret) after the helper.
            if ret is not None:
                self._announce(v.name, ret, end)
        return v

    def _announce(self, name: str, ret: int, t: int) -> None:
        """dups.c kmod_dup_request_announce(): matches by name only."""
        ent = self._entries.get(name)
        if ent is None:
            return
        if ent.done_ns is not None:
            if ent.done_ns + self.tail_ns <= t:
                del self._entries[name]
            elif not self._first_only:
                # 6.4-era: dup_ret = ret unconditionally, completion queued again (a no-op
                # for waiters, and delete_work stays where the first completion put it).
                ent.dup_ret = ret
            return
        # First announce: dup_ret = ret; complete_all(); delete_work in tail_ns. In the
        # deferred form the completion runs from a work item; its latency is not modelled.
        ent.dup_ret = ret
        ent.done_ns = t
        acc = ent.acc
        oracle = self.actual.dups
        for w in ent.waiters:
            assert w.arrive_ns is not None
            w.predicted_ret = ret
            w.would_wait_ns = wait = t - w.arrive_ns
            acc.dup_wait_ns += wait
            if oracle and w.done:
                w.oracle_agrees = not w.modprobe_saved and w.actual_ret == ret
        ent.waiters = []
        expiry = t + self.tail_ns + self.slack_ns  # kept through the timer's slack
        self._expiry.append((expiry, name, ent))
        self._next_expiry = min(self._next_expiry, expiry)

    # ---- loads: kernel/module/main.c -----------------------------------------------------

    def load_start(self, load: Load) -> None:
        """At syscall entry: idempotent() by inode, and the same-name state the patient
        check will find."""
        t = load.start_ns
        if t >= self._next_expiry or t >= self._next_sweep:
            self.expire(t)
        name = load.module
        key = load.inode  # None for init_module(): it never converges
        own: _Winner | None = None
        waiter_of: _Winner | None = None
        if key is not None:
            waiter_of = self._winners.get(key)
            if waiter_of is None:
                own = self._winners[key] = _Winner(load.id)
        acc: _Acc | None = None
        rival: bool | None = None
        if name:
            acc = self._stats_for(name)
            acc.race_arrive(t)
            active = self._loads_active.get(name, 0)
            rival = active > 0 or name in self._live
            self._loads_active[name] = active + 1
        self._pending_loads[load.id] = _PendingLoad(name, t, key, own, waiter_of, rival, acc)

    def load_done(self, load: Load) -> LoadVerdict:
        """At syscall exit: classify the actual outcome and what it cost."""
        p = self._pending_loads.pop(load.id, None)
        if p is None:  # start not seen: replay it now
            self.load_start(load)
            p = self._pending_loads.pop(load.id)
        end = load.end_ns if load.end_ns is not None else p.start_ns
        ret = load.ret
        if p.own is not None:  # idempotent_complete(): waiters get ret, no tail
            p.own.ret = ret
            p.own.done = True
        self._forget_load(p, end)
        name = load.module or p.name
        acc = p.acc if p.acc is not None and p.name == name else self._stats_for(name)
        if p.acc is None:
            acc.race_late(p.start_ns, end)
        # Name unknown at start (init_module): assume the usual case, the early check.
        rival = True if p.rival_before is None else p.rival_before

        actual = self.actual
        winner = p.waiter_of
        outcome: str
        rule: Rule | None = None
        kind = ""  # MODULE_STATS: "becoming" (len), "invalid" (2 * len) or none
        read = True
        waited = (
            actual.idempotent
            and winner is not None
            and not load.loaded
            and (ret == winner.ret or not winner.done)
        )
        if waited and ret == -errno.EINTR and winner is not None and winner.ret != ret:
            # idempotent_wait_for_completion() interrupted: u->ret is still -EINTR.
            outcome, rule, read = "EINTR", "idempotent", False
        elif waited:
            # idempotent_wait_for_completion(): the winner's ret, no read, no allocation.
            outcome, rule, read = "converged", "idempotent", False
        elif ret is None:
            outcome, read = "unknown", False
        elif ret == 0:
            outcome = "loaded"
        else:
            err = -ret
            outcome = errno.errorcode.get(err, str(ret))
            if load.loaded:
                pass  # do_init_module() failed: freed without a MODULE_STATS bump
            elif err == errno.EEXIST or err == errno.EBUSY:
                # module_patient_check_exists(): a same-name module was loading or LIVE.
                # Which of its two calls failed is not visible; attributed as: "Becoming"
                # (early_mod_check()) if a same-name load was in flight or the module LIVE
                # when this attempt started, else "Load" (add_unformed_module(): a later
                # starter overtook this one after its early check).
                if not actual.patient:
                    rule = "exists"  # only in add_unformed_module(), after layout
                elif rival:
                    rule = "patient-becoming"  # early_mod_check(), before layout
                else:
                    rule = "patient-load"  # a later starter got to add_unformed_module()
                kind = "becoming" if rule == "patient-becoming" else "invalid"
                self._add_dup_failed(name, "Becoming" if kind == "becoming" else "Load")
                acc.extra_ns += end - p.start_ns
            elif err in _NOT_READ_ERRNOS:
                read = False
            elif err in _AFTER_ALLOC_ERRNOS:
                kind = "invalid"
            else:
                kind = "becoming"  # signature, ELF and modinfo checks come before layout

        wasted = 0
        if kind:
            # stats.c mod_stat_bump_becoming()/mod_stat_bump_invalid(). The decompressed
            # len is not visible at the syscall: load.size stands for it (a lower bound).
            size = load.size
            compressed = size if load.flags & MODULE_INIT_COMPRESSED_FILE else 0
            if kind == "becoming":
                wasted = size + compressed
                self._becoming_bytes += wasted
                self._failed_becoming += 1
            else:
                wasted = 2 * size + compressed
                self._invalid_bytes += wasted
                self._failed_load += 1

        would_converge = winner is not None
        saved = wasted if would_converge else 0
        acc.loads += 1
        if outcome == "loaded":
            acc.loads_ok += 1
        elif outcome == "converged":
            acc.converged += 1
        elif outcome != "unknown":
            acc.load_failures[outcome] = acc.load_failures.get(outcome, 0) + 1
        if outcome == "loaded" or outcome == "EEXIST":
            self._live.add(name)  # LIVE now, or found LIVE by the patient check
        if read:
            acc.reads += 1
        if would_converge:
            acc.would_converge += 1
        acc.wasted_bytes += wasted
        acc.bytes_saved += saved
        self._saved_bytes += saved
        return LoadVerdict(
            load.id, name, load.syscall, ret, outcome, rule, wasted,
            winner.load_id if winner is not None else None, would_converge, saved,
        )  # fmt: skip

    def _add_dup_failed(self, name: str, reason: str) -> None:
        """stats.c try_add_failed_module(): count and a reason mask per name."""
        row = self._dup_failed.get(name)
        if row is None:
            row = self._dup_failed[name] = _DupRow()
        row.count += 1
        row.reasons.add(reason)

    # ---- results -------------------------------------------------------------------------

    def modules(self) -> dict[str, ModuleStats]:
        """Per request string (requests) or kmod module name (loads)."""
        return {name: acc.snapshot() for name, acc in self._acc.items()}

    def stats(self) -> StatsSummary:
        """MODULE_STATS as the actual kernel would have counted it."""
        table: dict[str, DupFailed] = {}
        for name, row in self._dup_failed.items():
            # stats.c mod_fail_to_str()
            reason = " & ".join(r for r in ("Becoming", "Load") if r in row.reasons)
            table[name] = DupFailed(name, row.count, reason)
        return StatsSummary(
            wasted_bytes=self._becoming_bytes + self._invalid_bytes,
            becoming_bytes=self._becoming_bytes,
            invalid_bytes=self._invalid_bytes,
            failed_becoming=self._failed_becoming,
            failed_load=self._failed_load,
            dup_failed=table,
            bytes_saved_idempotent=self._saved_bytes,
        )
