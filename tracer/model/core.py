"""The Model: feeds each moment to the mechanism it concerns and keeps the shared state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tracer.model.counters import ModuleStats, Tallies, Tally
from tracer.model.dups import DUP_TAIL_NS, Dups, RequestVerdict
from tracer.model.loads import Loads, LoadVerdict
from tracer.model.profile import Profile
from tracer.model.stats import ModStats, StatsSummary
from tracer.model.throttle import Throttle
from tracer.stories import STALE_NS, Load, Request

_INF: Final = float("inf")


class Model:
    """The kernel's handling of module requests and loads; see the package docstring."""

    def __init__(
        self,
        actual: Profile,
        tail_ns: int = DUP_TAIL_NS,
        *,
        stale_ns: int | None = STALE_NS,
        oracle: Callable[[Request], bool | None] | None = None,
    ) -> None:
        self.actual = actual
        self.tail_ns = tail_ns
        # The kernel's own verdict, where traced (the oracle kernel): consulted only where
        # the order of events is not observable.
        self.oracle = oracle
        self.stale_ns = stale_ns
        self._tallies = Tallies()
        self._dups = Dups(actual, tail_ns, self._tallies, oracle)
        self._stats = ModStats(modelled=not actual.module_stats)
        self._loads = Loads(actual, self._tallies, self._stats)
        self._throttle = Throttle()
        self._pending_reqs: dict[int, tuple[RequestVerdict, Tally]] = {}
        self._next_sweep: float = _INF if stale_ns is None else 0

    @property
    def slack_ns(self) -> int:
        return self._dups.slack_ns

    # ---- bookkeeping -------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        if t >= self._dups.next_expiry or t >= self._next_sweep:
            self.expire(t)

    def expire(self, now_ns: int) -> None:
        """Drop dups entries whose tail ended (dups.c kmod_dup_request_delete()) and, after
        stale_ns, in-flight records whose end was never seen."""
        self._dups.expire(now_ns)
        self._throttle.expire(now_ns)
        if now_ns >= self._next_sweep and self.stale_ns is not None:
            before = now_ns - self.stale_ns
            for rid, (v, tally) in list(self._pending_reqs.items()):
                if v.arrive_ns is None or v.arrive_ns < before:
                    del self._pending_reqs[rid]
                    tally.race.leave(before)
            self._dups.sweep(before)
            self._loads.sweep(before)
            self._throttle.sweep(before)
            self._next_sweep = now_ns + max(1, self.stale_ns // 2)

    def state_sizes(self) -> dict[str, int]:
        """Sizes of the transient state; all 0 once everything ended and expired."""
        return {
            "entries": len(self._dups.entries),
            "expiry_queue": len(self._dups.expiry),
            "pending_requests": len(self._pending_reqs),
            "pending_loads": len(self._loads.pending),
            "inode_winners": len(self._loads.winners),
            "loads_active": len(self._loads.active),
            "throttle_slots": len(self._throttle),
        }

    # ---- requests: kernel/module/kmod.c + dups.c -----------------------------------------

    def request_arrive(self, req: Request) -> RequestVerdict:
        """At kmod_dup_request_exists_wait() (its kprobe where traced, else the tracepoint
        module:module_request just before it)."""
        t = req.arrive_ns
        if t is None:  # never reached the tracepoint, so never reached dups.c either;
            # nothing is kept: request_done() counts it.
            return RequestVerdict(req.id, req.display_name, req.wait, "rejected", None)
        self._advance(t)
        tally = self._tallies[req.name]
        v = self._dups.arrive(req, t, tally)
        v.slots_held = self._throttle.enter(req.id, t)
        tally.c.would_queue += v.slots_held >= self._throttle.slots
        if v.verdict == "duplicate" and v.predicted_ret is not None:
            self._throttle.release(req.id, t)  # dups returns at once: nowait or tail
        tally.c.requests += 1
        tally.race.arrive(t)
        self._pending_reqs[req.id] = (v, tally)
        return v

    def request_done(self, req: Request) -> RequestVerdict:
        """At the __request_module return; a first or untracked request announces."""
        ran = req.modprobe_pid is not None or req.umh_start_ns is not None
        pending = self._pending_reqs.pop(req.id, None)
        if pending is None:
            if req.tp_ns is None:
                return self._rejected(req, ran)
            self.request_arrive(req)  # arrival not seen: replay it now
            pending = self._pending_reqs.pop(req.id)
        v, tally = pending
        v.actual_ret, v.done = req.ret, True
        tally.c.modprobe_spawns += ran
        end = req.end_ns
        if end is None:
            end = v.arrive_ns if v.arrive_ns is not None else 0
        tally.race.leave(end)
        if v.verdict == "duplicate":
            self._duplicate_done(req, v, tally, ran, end)
        else:
            # It ran modprobe under dups too, so its own return is its prediction.
            v.predicted_ret, v.would_wait_ns = req.ret, 0
            if self.actual.dups:
                v.oracle_agrees = ran
            # call_modprobe(): kmod_dup_request_announce(name, ret) after the helper.
            if req.ret is not None:
                at = req.kernel_announce_ns if req.kernel_announce_ns is not None else end
                for w in self._dups.announce(v.name, req.ret, at):
                    self._throttle.release(w.req_id, at)  # woken: up() as it returns
            self._throttle.release(req.id, end)
        return v

    def _rejected(self, req: Request, ran: bool) -> RequestVerdict:
        """Stopped before the tracepoint (LSM, throttle, no modprobe path): no dups.c."""
        v = RequestVerdict(req.id, req.display_name, req.wait, "rejected", None)
        v.actual_ret = v.predicted_ret = req.ret
        v.done = True
        c = self._tallies[v.name].c
        c.rejected += 1
        c.modprobe_spawns += ran
        return v

    def _duplicate_done(self, req: Request, v: RequestVerdict, tally: Tally, ran: bool,
                        end: int) -> None:  # fmt: skip
        if ran:  # the actual kernel ran a modprobe dups would have saved
            v.modprobe_saved = True
            if req.umh_start_ns is not None and req.umh_end_ns is not None:
                tally.c.extra_ns += req.umh_end_ns - req.umh_start_ns
            elif v.arrive_ns is not None:
                tally.c.extra_ns += end - v.arrive_ns
        if self.actual.dups and v.predicted_ret is not None:
            v.oracle_agrees = not ran and v.predicted_ret == req.ret

    # ---- loads: kernel/module/main.c -----------------------------------------------------

    def load_start(self, load: Load) -> None:
        """At sys_enter_{finit,init}_module."""
        self._advance(load.start_ns)
        self._loads.start(load)

    def load_done(self, load: Load) -> LoadVerdict:
        """At sys_exit_{finit,init}_module."""
        return self._loads.done(load)

    # ---- results -------------------------------------------------------------------------

    def modules(self) -> dict[str, ModuleStats]:
        """Per request string (requests) or kmod module name (loads)."""
        return {name: t.snapshot() for name, t in self._tallies.items()}

    def stats(self) -> StatsSummary:
        """MODULE_STATS as the actual kernel would have counted it (modelled: as a kernel
        with CONFIG_MODULE_STATS would have)."""
        return self._stats.summary()
