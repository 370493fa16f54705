"""The recorder's loop takes a ring-buffer backlog batch by batch: each batch released as
far as is safe and written, never a storm's 20 000 records decoded and held at once, and
no event released before an older one still in the ring."""

from __future__ import annotations

import ctypes
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

from tracer.events import CEvent, Event, Kind
from tracer.live import REORDER_NS, Reorder, Run
from tracer.probes import Tracer
from tracer.record import TraceWriter, make_header, read_trace


class FakeRing:
    """bcc's BPF object as far as the ring buffer goes, with libbpf's semantics: records
    in order, each handed to the callback; a negative return consumes that record and
    stops (ringbuf_process_ring: "update consumer pos and bail out")."""

    def __init__(self) -> None:
        self.records: deque[CEvent] = deque()
        self.callback: Any = None
        self.calls = 0

    def ring_buffer_consume(self) -> None:
        self.calls += 1
        while self.records:
            rec = self.records.popleft()
            if self.callback(None, ctypes.pointer(rec), ctypes.sizeof(rec)) < 0:
                return


def _record(ts_ns: int, pid: int) -> CEvent:
    c = CEvent()
    c.ts_ns, c.kind, c.pid = ts_ns, int(Kind.UMH_EXIT), pid
    return c


def _tracer(ring: FakeRing, on_event: Any, batch: int) -> Tracer:
    tracer = Tracer(on_event, notice=lambda m: None, batch=batch)
    tracer.bpf = ring
    ring.callback = tracer._callback
    return tracer


def test_consume_stops_at_the_batch_and_the_next_takes_the_next() -> None:
    ring, got = FakeRing(), list[Event]()
    ring.records.extend(_record(i, i) for i in range(10))
    tracer = _tracer(ring, got.append, batch=4)
    assert tracer.consume() is True and [e.pid for e in got] == [0, 1, 2, 3]
    assert tracer.consume() is True and len(got) == 8
    assert tracer.consume() is False and [e.pid for e in got] == list(range(10))
    assert tracer.consume() is False  # an empty ring: nothing, nothing more


def test_drain_takes_everything() -> None:
    ring, got = FakeRing(), list[Event]()
    ring.records.extend(_record(i, i) for i in range(10))
    _tracer(ring, got.append, batch=3).drain()
    assert len(got) == 10 and not ring.records


class Fed:
    """The correlator's place: what was released, in order, and the heap's size then."""

    def __init__(self, reorder: Reorder) -> None:
        self.reorder = reorder
        self.events: list[Event] = []
        self.max_pending = 0

    def feed_all(self, events: list[Event]) -> None:
        self.events += events
        self.max_pending = max(self.max_pending, len(events) + len(self.reorder.pending()))


def _run(tracer: Tracer, reorder: Reorder, writer: TraceWriter | None) -> tuple[Run, Fed]:
    run = Run.__new__(Run)  # the loop's state only: no probes, no judge
    run.tracer, run.reorder, run.writer = tracer, reorder, writer
    run._stop, run._early = False, set()
    run.procs, run.ksyms = {}, {}
    fed = Fed(reorder)
    run.correlator = fed  # type: ignore[assignment]
    return run, fed


def test_a_backlog_is_released_batch_by_batch_in_timestamp_order(tmp_path: Path) -> None:
    """20 000 records a storm left in the ring, reserved in order but each timestamped up
    to 5 ms off (CPUs disagree), all older than the window: one pump takes them all, but
    never holds more than a batch and a window's worth, writes each batch as it goes, and
    releases them in timestamp order."""
    rng = random.Random(14)
    now = time.monotonic_ns()
    base = now - 10 * 1_000_000_000  # a backlog 10 s behind
    ring, reorder = FakeRing(), Reorder()
    stamps = [base + i * 50_000 + rng.randrange(5_000_000) for i in range(20_000)]
    ring.records.extend(_record(ts, i) for i, ts in enumerate(stamps))
    tracer = _tracer(ring, reorder.push, batch=1024)
    writer = TraceWriter(str(tmp_path / "t.jsonl"))
    writer.write(make_header({}, [], []))
    flushed: list[int] = []  # lines in the buffer at each flush
    real_flush = writer.flush

    def flush() -> None:
        flushed.append(bytes(writer._buf).count(b"\n"))
        real_flush()

    writer.flush = flush  # type: ignore[method-assign]
    run, fed = _run(tracer, reorder, writer)
    run._pump()
    assert [e.ts_ns for e in fed.events] == sorted(stamps)
    # a window (20 ms) is 400 records of this storm (and its 5 ms skew), plus the batch
    bound = 1024 + 2 * REORDER_NS // 50_000
    assert fed.max_pending <= bound
    assert ring.calls == 20_000 // 1024 + 1
    assert len(flushed) == ring.calls and max(flushed) <= bound  # one write(2) a batch
    writer.close({})
    assert len(read_trace(str(tmp_path / "t.jsonl")).events) == 20_000


def test_a_cut_short_batch_keeps_what_the_ring_may_still_precede() -> None:
    """A batch stopped at the limit says nothing about the clock: records still in the ring
    can be up to a window older than the newest taken, so only events older than that go."""
    now = time.monotonic_ns()
    ring, reorder = FakeRing(), Reorder()
    old = now - 5 * 1_000_000_000
    # the batch: 0 ms, 1 ms, 30 ms; the ring still holds one at 12 ms (another CPU's)
    ring.records.extend(_record(old + ms * 1_000_000, ms) for ms in (0, 1, 30, 12))
    tracer = _tracer(ring, reorder.push, batch=3)
    run, fed = _run(tracer, reorder, None)
    released: list[list[int]] = []
    real_consume = tracer.consume

    def consume() -> bool:
        released.append([e.pid for e in fed.events])
        return real_consume()

    tracer.consume = consume  # type: ignore[method-assign]
    run._pump()
    assert released == [[], [0, 1]]  # 30 ms held: 12 ms had not come yet
    assert [e.pid for e in fed.events] == [0, 1, 12, 30]
