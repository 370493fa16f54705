"""Chrome trace JSON export: structure Perfetto accepts, and the recorded 6.1 storms in it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tracer.kernel import Features
from tracer.model import LoadVerdict, RequestVerdict
from tracer.perfetto import chrome_trace, write_chrome_trace
from tracer.record import Trace, read_trace
from tracer.session import Replay, replay
from tracer.stories import Load, Request

TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"

Ev = dict[str, Any]


@pytest.fixture(scope="module")
def trace() -> Trace:
    return read_trace(str(TRACE))


@pytest.fixture(scope="module")
def rep(trace: Trace) -> Replay:
    return replay(trace.events, trace.features.profile)


@pytest.fixture(scope="module")
def doc(rep: Replay, trace: Trace) -> dict[str, Any]:
    return chrome_trace(rep, trace.header)


def _of(doc: dict[str, Any], ph: str, cat: str | None = None) -> list[Ev]:
    return [e for e in doc["traceEvents"] if e["ph"] == ph and (cat is None or e["cat"] == cat)]


def check_valid(doc: dict[str, Any]) -> None:
    """What ui.perfetto.dev needs from a Chrome JSON trace, as strictly as we can say it."""
    assert set(doc) >= {"traceEvents", "displayTimeUnit", "metadata"}
    assert doc["displayTimeUnit"] == "ms"
    evs: list[Ev] = doc["traceEvents"]
    json.dumps(doc, allow_nan=False)  # plain JSON: no NaN, no non-serialisable values
    for e in evs:
        assert e["ph"] in {"X", "i", "M", "b", "e"}, e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], float) and e["ts"] >= 0, e
            assert isinstance(e["name"], str) and e["name"], e
        if e["ph"] == "X":
            assert isinstance(e["dur"], float) and e["dur"] >= 0, e
        if e["ph"] == "i":
            assert e["s"] in {"t", "p", "g"}, e
    # Async pairs: every b has one e with the same id, cat and pid (none are emitted now).
    opened = Counter((e["id"], e["cat"], e["pid"]) for e in evs if e["ph"] == "b")
    closed = Counter((e["id"], e["cat"], e["pid"]) for e in evs if e["ph"] == "e")
    assert opened == closed
    # Metadata first, then timestamps in order.
    phases = [e["ph"] == "M" for e in evs]
    assert phases == sorted(phases, reverse=True)
    ts = [e["ts"] for e in evs if e["ph"] != "M"]
    assert ts == sorted(ts)
    # Every pid is a named process, every thread track a named thread.
    pnames = {e["pid"]: e["args"]["name"] for e in evs
              if e["ph"] == "M" and e["name"] == "process_name"}
    tnames = {(e["pid"], e["tid"]) for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(set(pnames.values())) == len(pnames), "one process per name"
    for e in evs:
        assert e["pid"] in pnames, e
        if e["ph"] == "X" or (e["ph"] == "i" and e["s"] == "t"):
            assert (e["pid"], e["tid"]) in tnames, e
    # A Chrome tid belongs to one process only (no thread migrating between processes).
    owners: dict[int, set[int]] = {}
    for e in evs:
        if e["ph"] in {"X", "i"} and e.get("s", "t") == "t":
            owners.setdefault(e["tid"], set()).add(e["pid"])
    assert all(len(p) == 1 for p in owners.values())
    assert not set(owners) & set(pnames), "thread ids apart from process ids"
    # Slices on one thread track nest (thread instants count as zero-length slices).
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in evs:
        if e["ph"] == "X" or (e["ph"] == "i" and e["s"] == "t"):
            span = (e["ts"], e["ts"] + e.get("dur", 0.0))
            tracks.setdefault((e["pid"], e["tid"]), []).append(span)
    for key, spans in tracks.items():
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-6, f"{key}: {start}..{end} crosses"
            stack.append(end)


def test_valid_for_perfetto(doc: dict[str, Any]) -> None:
    check_valid(doc)


def test_metadata(doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    assert meta["kernel"] == "6.1.0-56-amd64"
    assert meta["profile"] == "6.1"
    assert meta["clock"] == "CLOCK_MONOTONIC"
    # The xfs storm: 8 loads of the 4,215,817-byte xfs.ko, 7 of them -EEXIST, each of
    # which 6.1 read and laid out (2 x len) before finding the module live.
    assert meta["modules"]["xfs"]["wasted_bytes"] == 7 * 2 * 4_215_817


def test_one_process_per_module(doc: dict[str, Any]) -> None:
    names = {e["args"]["name"] for e in _of(doc, "M") if e["name"] == "process_name"}
    # One track per module the recorded storms touched. Requests share their module's
    # track (the fs-minix requests sit with the minix loads; "fs-minix" has none); a
    # request that loaded nothing keeps its own string.
    assert names == {"appletalk", "crc32c_generic", "dummy", "ifb", "kmodstorm",
                     "kmt-no-such-module", "libcrc32c", "llc", "minix", "psnap", "veth", "xfs"}
    pid = {e["args"]["name"]: e["pid"] for e in _of(doc, "M") if e["name"] == "process_name"}
    on_minix = Counter(e["cat"] for e in _of(doc, "X") if e["pid"] == pid["minix"])
    assert on_minix["request"] == 8 and on_minix["load"] == 7
    on_dummy = Counter(e["cat"] for e in _of(doc, "X") if e["pid"] == pid["dummy"])
    assert on_dummy["request"] == 50 and on_dummy["load"] == 10
    # Small pids, in order of first activity, the same on every export.
    assert sorted(pid.values()) == list(range(1, len(pid) + 1))
    assert pid["kmodstorm"] == 1 and pid["dummy"] == 2 and pid["xfs"] == len(pid)


def test_stable(rep: Replay, trace: Trace, doc: dict[str, Any]) -> None:
    assert chrome_trace(rep, trace.header) == doc


def test_every_story_is_a_slice(doc: dict[str, Any], rep: Replay) -> None:
    reqs = _of(doc, "X", "request")
    assert len([e for e in reqs if e["name"].startswith("request ")]) == len(rep.requests) == 89
    assert len(_of(doc, "X", "load")) == len(rep.loads) == 63
    helpers = sum(r.umh_start_ns is not None for r, _ in rep.requests)
    assert len(_of(doc, "X", "modprobe")) == helpers
    assert len(_of(doc, "X", "init")) == sum(ld.init_start_ns is not None for ld, _ in rep.loads)
    # Microseconds, ns kept: each load slice is its story's start and duration.
    by_id = {e["args"]["id"]: e for e in _of(doc, "X", "load")}
    for ld, v in rep.loads:
        e = by_id[ld.id]
        assert e["name"] == ld.syscall
        assert e["ts"] == pytest.approx(ld.start_ns / 1000, abs=1e-3)
        assert ld.duration_ns is not None
        assert e["dur"] == pytest.approx(ld.duration_ns / 1000, abs=1e-3)
        assert v is not None and e["args"]["verdict"] == v.outcome
        assert e["args"]["wasted_bytes"] == v.wasted_bytes


def test_xfs_storm(doc: dict[str, Any], rep: Replay) -> None:
    pid = next(e["pid"] for e in _of(doc, "M")
               if e["name"] == "process_name" and e["args"]["name"] == "xfs")
    loads = [e for e in _of(doc, "X", "load") if e["pid"] == pid]
    assert Counter(e["args"]["verdict"] for e in loads) == {"EEXIST": 7, "loaded": 1}
    assert all(e["args"]["errno"] == "EEXIST" for e in loads if e["args"]["ret"] == -17)
    wasted = sum(e["args"]["wasted_bytes"] for e in loads)
    assert wasted == rep.judge.model.modules()["xfs"].wasted_bytes > 50 * 2**20
    # Eight modprobe threads, each its own named track.
    assert len({e["tid"] for e in loads}) == 8
    tnames = {e["args"]["name"] for e in _of(doc, "M")
              if e["name"] == "thread_name" and e["pid"] == pid}
    assert len(tnames) == 8 and all(n.startswith("modprobe[") for n in tnames)


def test_one_instant_per_duplicate(doc: dict[str, Any], rep: Replay) -> None:
    dups = [(r, v) for r, v in rep.requests if v is not None and v.verdict == "duplicate"]
    assert len(dups) == sum(m.duplicates for m in rep.judge.model.modules().values()) == 74
    inst = _of(doc, "i", "duplicate")
    assert len(inst) == len(dups)
    assert Counter(e["args"]["req_id"] for e in inst) == Counter(r.id for r, _ in dups)
    slices = {e["args"]["id"]: e for e in _of(doc, "X", "request")
              if e["name"].startswith("request ")}
    for e in inst:
        assert e["s"] == "t"
        assert e["args"]["verdict"] == "duplicate"
        assert e["args"]["anchor_id"] is not None and "predicted_ret" in e["args"]
        s = slices[e["args"]["req_id"]]
        assert (s["pid"], s["tid"]) == (e["pid"], e["tid"])
        assert s["ts"] <= e["ts"] <= s["ts"] + s["dur"]
        assert s["args"]["verdict"] == "duplicate"
        assert e["name"] == "duplicate " + s["name"].removeprefix("request ")


def test_module_free_instants(doc: dict[str, Any], rep: Replay) -> None:
    inst = _of(doc, "i", "module")
    assert len(inst) == len(rep.judge.freed) == 3
    assert all(e["s"] == "p" and e["name"] == "module_free kmodstorm" for e in inst)


def test_write(tmp_path: Path, rep: Replay, trace: Trace, doc: dict[str, Any]) -> None:
    out = tmp_path / "t.json"
    write_chrome_trace(rep, trace.header, str(out))
    assert json.loads(out.read_text()) == doc


def _req(rid: int, tid: int, start: int, end: int | None, **kw: Any) -> Request:
    return Request(pid=tid, tid=tid, comm="w", ppid=1, wait=True, start_ns=start, name="m",
                   tp_ns=start + 10, end_ns=end, id=rid, **kw)


def test_unfinished_and_overlapping_stories() -> None:
    rep = replay([], Features.from_dict({"idempotent": True}).profile)
    # Same thread, two requests that overlap without nesting: the second gets its own track.
    rep.requests.append((_req(1, 7, 1000, 5000, umh_start_ns=1500, umh_end_ns=9000),
                         RequestVerdict(1, "m", True, "first", 1010)))
    rep.requests.append((_req(2, 7, 3000, 8000), RequestVerdict(2, "m", True, "duplicate", 3010,
                                                                anchor_id=1)))
    # A load whose exit and init end were never seen.
    ld = Load("finit_module", 9, 9, "modprobe", 1, 2000, file="m.ko", kernel_name="m",
              init_start_ns=2500, id=3)
    rep.loads.append((ld, LoadVerdict(3, "m", "finit_module", None, "unknown", None, 0, None,
                                      False, 0)))
    doc = chrome_trace(rep, {"kernel": "k", "features": {"idempotent": True}})
    check_valid(doc)
    assert doc["metadata"]["profile"] == "6.5+"
    xs = {(e["cat"], e["name"]): e for e in _of(doc, "X")}
    # The modprobe slice is clamped into its request, which ended first.
    mp = xs[("modprobe", "modprobe")]
    assert mp["ts"] == 1.5 and mp["ts"] + mp["dur"] == 5.0
    load, init = xs[("load", "finit_module")], xs[("init", "init")]
    assert load["args"]["unfinished"] and init["args"]["unfinished"]
    assert load["ts"] + load["dur"] == 9.0 == init["ts"] + init["dur"]  # the last timestamp
    tnames = sorted(e["args"]["name"] for e in _of(doc, "M") if e["name"] == "thread_name")
    assert tnames == ["modprobe[9]", "w[7]", "w[7] #2"]
    assert len(_of(doc, "i", "duplicate")) == 1


def test_empty() -> None:
    doc = chrome_trace(replay([], Features.from_dict({}).profile), {})
    check_valid(doc)
    assert doc["traceEvents"] == []


def test_checker_catches_bad_traces(doc: dict[str, Any]) -> None:
    """The validity check above is not vacuous."""
    x = next(e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "init")
    crossing = dict(x, ts=x["ts"] + 1.0, dur=x["dur"] + 1e9)
    unnamed = dict(x, pid=999)
    async_open = {"ph": "b", "id": 1, "cat": "c", "pid": x["pid"], "name": "a", "ts": x["ts"]}
    for bad in (crossing, unnamed, async_open):
        broken = dict(doc, traceEvents=[*doc["traceEvents"], bad])
        broken["traceEvents"].sort(key=lambda e: (e["ph"] != "M", e.get("ts", 0.0)))
        with pytest.raises(AssertionError):
            check_valid(broken)
