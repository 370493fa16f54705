"""Where events meet the model: one Sink for live use, one that collects for reports."""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from tracer import udev
from tracer.correlate import Correlator
from tracer.events import Event, Kind
from tracer.model import LoadVerdict, Model, Profile, RequestVerdict
from tracer.probes import DUP_ENTER_HOOK
from tracer.stories import Load, Request
from tracer.udev import Device

RequestCallback = Callable[[Request, RequestVerdict | None], None]
LoadCallback = Callable[[Load, LoadVerdict | None], None]


# Wait duplicates held for their announce at most (each a few objects): past it, an
# announce was lost and the oldest name's are shown without their prediction.
MAX_AWAITING = 4096


class Judge:
    """A Sink that runs the model at each moment and hands finished stories on."""

    def __init__(
        self,
        profile: Profile,
        on_request: RequestCallback | None = None,
        on_load: LoadCallback | None = None,
        oracle: Callable[[Request], bool | None] | None = None,
    ) -> None:
        self.model = Model(profile, oracle=oracle)
        self.on_request = on_request
        self.on_load = on_load
        self._verdicts: dict[int, RequestVerdict] = {}
        self.freed: list[tuple[int, str]] = []
        # udev worker pid -> its finished loads, shown once the worker names the device
        self._held: dict[int, list[tuple[Load, LoadVerdict]]] = {}
        # request name -> wait duplicates that ended before the announce that gives their
        # prediction (a cached entry's waiters can return before the request the model
        # anchored them on): shown once it comes, so that live shows what replay does
        self._awaiting: dict[str, list[tuple[Request, RequestVerdict]]] = {}
        self._awaiting_n = 0

    def request_arrive(self, req: Request) -> None:
        self.model.request_arrive(req)

    def request_return(self, req: Request) -> None:
        # every request gets its verdict: one that never reached the tracepoint is
        # "rejected" (the model counts it so, apart from the requests dups.c saw)
        self._verdicts[req.id] = self.model.request_done(req)
        if req.tp_ns is not None and req.name in self._awaiting:
            self._release(req.name, announced_only=True)

    def request_complete(self, req: Request) -> None:
        verdict = self._verdicts.pop(req.id, None)
        if verdict is not None and verdict.verdict == "duplicate" \
                and verdict.predicted_ret is None:
            self._awaiting.setdefault(req.name, []).append((req, verdict))
            self._awaiting_n += 1
            if self._awaiting_n > MAX_AWAITING:  # an announce lost: show the oldest as is
                self._release(next(iter(self._awaiting)), announced_only=False)
            return
        if self.on_request is not None:
            self.on_request(req, verdict)

    def _release(self, name: str, announced_only: bool) -> None:
        ready: list[tuple[Request, RequestVerdict]] = []
        keep: list[tuple[Request, RequestVerdict]] = []
        for story in self._awaiting.pop(name):
            (keep if announced_only and story[1].predicted_ret is None else ready).append(story)
        if keep:
            self._awaiting[name] = keep
        self._awaiting_n -= len(ready)
        if self.on_request is not None:
            for r, v in ready:
                self.on_request(r, v)

    def load_start(self, load: Load) -> None:
        self.model.load_start(load)

    def load_complete(self, load: Load) -> None:
        verdict = self.model.load_done(load)
        if udev.is_worker(load.comm):
            self._held.setdefault(load.pid, []).append((load, verdict))
        elif self.on_load is not None:
            self.on_load(load, verdict)

    def device_done(self, pid: int, device: Device) -> None:
        """udev worker PID finished DEVICE: the loads it made since its last one were
        for it."""
        for load, verdict in self._held.pop(pid, []):
            load.device = device
            if self.on_load is not None:
                self.on_load(load, verdict)

    def flush(self) -> None:
        """The trace ended: show held loads whose device never came, and duplicates whose
        announce never came."""
        for name in list(self._awaiting):
            self._release(name, announced_only=False)
        held, self._held = self._held, {}
        for stories in held.values():
            for load, verdict in stories:
                if self.on_load is not None:
                    self.on_load(load, verdict)

    def module_free(self, ev: Event) -> None:
        if len(self.freed) < 10_000:
            self.freed.append((ev.ts_ns, ev.name))


def judge_correlator(judge: Judge, hooks: Collection[str],
                     modaliases: Mapping[str, str] | None = None) -> Correlator:
    """The Correlator that feeds JUDGE the events of a trace made with HOOKS (names as
    Attached.hook_names() and a trace's header give them). `live` and replay both build
    it here so that one trace gets one order of arrivals, hence one set of verdicts: at
    the kprobe just before kmod_dup_mutex where it was attached, else at the tracepoint."""
    return Correlator(judge, modaliases, arrive_at_dup_enter=DUP_ENTER_HOOK.name in hooks)


def listed_hooks(header: Mapping[str, Any]) -> list[str] | None:
    """The hooks a trace's header says were attached; None if it lists none readably."""
    hooks = header.get("hooks")
    if isinstance(hooks, list) and all(isinstance(h, str) for h in hooks):
        return hooks
    return None


@dataclass(frozen=True, slots=True)
class Replay:
    """Every story of a finished trace, with its verdict, in completion order.

    Built complete by replay(): the judge and correlator that produced the stories come
    with them (the model's module table, the freed modules, the event count).
    """

    requests: list[tuple[Request, RequestVerdict | None]]
    loads: list[tuple[Load, LoadVerdict | None]]
    judge: Judge
    correlator: Correlator


def replay(events: Iterable[Event], profile: Profile,
           oracle: Callable[[Request], bool | None] | None = None,
           modaliases: Mapping[str, str] | None = None,
           hooks: Collection[str] | None = None, consume: bool = False) -> Replay:
    """EVENTS through a Judge, as `live` would have judged them. HOOKS: those the trace's
    header lists (listed_hooks()); None, for events with no header, takes the hooks the
    events show. CONSUME: EVENTS is a list the caller no longer needs; it is sorted in
    place and emptied as the replay goes, so that each event is freed once fed (a 1M-event
    trace's events are about 330 MB: kept, they doubled the peak of `report`)."""
    requests: list[tuple[Request, RequestVerdict | None]] = []
    loads: list[tuple[Load, LoadVerdict | None]] = []
    judge = Judge(
        profile,
        on_request=lambda r, v: requests.append((r, v)),
        on_load=lambda ld, v: loads.append((ld, v)),
        oracle=oracle,
    )
    # attrgetter and `in` over a map: C loops, where a lambda and a generator cost a Python
    # call per event (a tenth of a large replay)
    if consume and isinstance(events, list):
        events.sort(key=attrgetter("ts_ns"))
        ordered = events
    else:
        ordered = sorted(events, key=attrgetter("ts_ns"))
    if hooks is None:
        shown = Kind.DUP_ENTER in map(attrgetter("kind"), ordered)
        hooks = (DUP_ENTER_HOOK.name,) if shown else ()
    corr = judge_correlator(judge, hooks, modaliases)
    # Every story is kept for the report, a few objects per request or load: the cyclic
    # GC would rescan them all each time they grew by a quarter, which made a 1M-event
    # replay 45 % slower and its cost per event grow with the trace. The stories hold no
    # cycles; whatever else does is collected once the GC is back on.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        corr.feed_all(_drain(ordered) if consume else ordered)
        judge.flush()
    finally:
        if gc_was_on:
            gc.enable()
    return Replay(requests, loads, judge, corr)


def _drain(events: list[Event], chunk: int = 65_536) -> Iterator[Event]:
    """EVENTS in order, taken out of the list a chunk at a time (from its end, reversed
    first, so that no chunk moves the rest): an event is freed once fed, unless a story
    kept it."""
    events.reverse()
    while events:
        part = events[-chunk:]
        del events[-chunk:]
        part.reverse()
        yield from part
