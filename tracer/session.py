"""Where events meet the model: one Sink for live use, one that collects for reports."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter

from tracer import udev
from tracer.correlate import Correlator
from tracer.events import Event, Kind
from tracer.model import LoadVerdict, Model, Profile, RequestVerdict
from tracer.stories import Load, Request
from tracer.udev import Device

RequestCallback = Callable[[Request, RequestVerdict | None], None]
LoadCallback = Callable[[Load, LoadVerdict | None], None]


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

    def request_arrive(self, req: Request) -> None:
        self.model.request_arrive(req)

    def request_return(self, req: Request) -> None:
        if req.tp_ns is not None:
            self._verdicts[req.id] = self.model.request_done(req)

    def request_complete(self, req: Request) -> None:
        verdict = self._verdicts.pop(req.id, None)
        if self.on_request is not None:
            self.on_request(req, verdict)

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
        """The trace ended: show held loads whose device never came."""
        held, self._held = self._held, {}
        for stories in held.values():
            for load, verdict in stories:
                if self.on_load is not None:
                    self.on_load(load, verdict)

    def module_free(self, ev: Event) -> None:
        if len(self.freed) < 10_000:
            self.freed.append((ev.ts_ns, ev.name))


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
           modaliases: Mapping[str, str] | None = None) -> Replay:
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
    ordered = sorted(events, key=attrgetter("ts_ns"))
    corr = Correlator(judge, modaliases,
                      arrive_at_dup_enter=Kind.DUP_ENTER in map(attrgetter("kind"), ordered))
    # Every story is kept for the report, a few objects per request or load: the cyclic
    # GC would rescan them all each time they grew by a quarter, which made a 1M-event
    # replay 45 % slower and its cost per event grow with the trace. The stories hold no
    # cycles; whatever else does is collected once the GC is back on.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        corr.feed_all(ordered)
        judge.flush()
    finally:
        if gc_was_on:
            gc.enable()
    return Replay(requests, loads, judge, corr)
