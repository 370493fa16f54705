"""A replayed trace as Chrome trace JSON, the format ui.perfetto.dev opens.

Layout:

* one process track per name: requests are grouped by their request string (``fs-minix``),
  loads by their kmod module name (``xfs``); a request string equal to a module name
  (``dummy``) shares the module's track. pids are small ints in order of first activity.
* one thread track per (track, requester or loader thread), named ``comm[tid]``. The
  Chrome tids are synthetic (above every pid) so that a kernel thread that shows up on
  several process tracks (a modprobe whose module init requests another module) does not
  make Perfetto see a thread migrating between processes; the real tid is in the args.
* ``X`` complete slices, which nest on their thread track:
  ``request NAME`` > ``queued`` (kmod throttle, when >= 1 ms) and ``modprobe`` (the
  usermode helper); ``finit_module``/``init_module`` > ``init`` (do_init_module).
  A story whose end was never seen runs to the last timestamp of the trace and says
  ``unfinished`` in its args. In the rare case that two stories of one thread overlap
  without nesting, the later one goes to a second track of that thread.
* an instant (``i``, thread scope) at the arrival of every request that dups.c would have
  turned into a duplicate, with the anchor request id and the predicted return, and a
  process-scoped instant at every module_free.

``ts`` and ``dur`` are CLOCK_MONOTONIC microseconds (floats, so ns survive).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from tracer import bymodule
from tracer.model import LoadVerdict, RequestVerdict
from tracer.record import open_output
from tracer.report import load_fields, module_json, request_fields
from tracer.session import Replay
from tracer.stories import Load, Request, decode_wait_status
from tracer.timeline import load_group, request_group, time_span

# A request that waited at least this long for the kmod throttle gets a "queued" slice.
QUEUED_SLICE_NS = 1_000_000


def _us(ns: int) -> float:
    return ns / 1000.0


@dataclass(slots=True)
class _Slice:
    name: str
    cat: str
    start: int
    end: int
    args: dict[str, Any]
    children: list[_Slice] = field(default_factory=list)
    instants: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)


@dataclass(slots=True)
class _Story:
    group: str
    tid: int
    comm: str
    top: _Slice


def _child(name: str, cat: str, start: int | None, end: int | None, parent: _Slice,
           args: dict[str, Any]) -> _Slice | None:
    """A sub-slice clamped into its parent, so that it nests whatever the clocks said."""
    if start is None:
        return None
    s = min(max(start, parent.start), parent.end)
    e = parent.end if end is None else min(max(end, s), parent.end)
    if end is None:
        args = args | {"unfinished": True}
    return _Slice(name, cat, s, e, args)


def _last_ns(rep: Replay) -> int:
    """Where unfinished stories end: the last timestamp, module frees included."""
    return max([time_span(rep)[1]] + [ts for ts, _ in rep.judge.freed])


# The story fields each slice carries, by name: defined once in tracer.report, where
# `report --json` takes its own.
_REQUEST_ARGS = ("id", "pid", "tid", "comm", "ppid", "wait", "ret", "status", "verdict",
                 "queue_ns", "rejected", "modprobe_pid", "load_ids")
_DUPLICATE_ARGS = ("anchor_id", "predicted_ret", "would_wait_ns", "modprobe_saved")
_INSTANT_ARGS = ("verdict", "anchor_id", "predicted_ret", "actual_ret", "would_wait_ns",
                 "modprobe_saved")
_LOAD_ARGS = ("id", "module", "pid", "tid", "comm", "ppid", "file", "ino", "size", "flags",
              "ret", "errno", "loaded", "request_id", "verdict", "rule", "wasted_bytes",
              "winner_id", "would_converge", "bytes_saved", "alias", "devpath", "subsystem")


def _request_story(req: Request, v: RequestVerdict | None, last: int,
                   group: str | None = None) -> _Story:
    end = req.end_ns if req.end_ns is not None else max(last, req.start_ns)
    args = request_fields(req, v, _REQUEST_ARGS)
    if v is not None and v.verdict == "duplicate":
        args |= request_fields(req, v, _DUPLICATE_ARGS)
    if req.end_ns is None:
        args["unfinished"] = True
    top = _Slice(f"request {request_group(req)}", "request", req.start_ns, end, args)
    group = group or request_group(req)
    if req.tp_ns is not None and req.tp_ns - req.start_ns >= QUEUED_SLICE_NS:
        q = _child("queued", "request", req.start_ns, req.tp_ns, top,
                   {"queue_ns": req.queue_ns})
        if q is not None:
            top.children.append(q)
    mp = _child("modprobe", "modprobe", req.umh_start_ns, req.umh_end_ns, top, {
        "path": req.umh_path, "name": req.umh_name, "wait": req.umh_wait,
        "umh_ret": req.umh_ret, "modprobe_pid": req.modprobe_pid,
        "modprobe_status": None if req.modprobe_exit is None
        else decode_wait_status(req.modprobe_exit),
    })
    if mp is not None:
        top.children.append(mp)
    if v is not None and v.verdict == "duplicate":
        at = req.tp_ns if req.tp_ns is not None else req.start_ns
        top.instants.append((f"duplicate {v.name}", min(max(at, top.start), top.end),
                             {"req_id": req.id} | request_fields(req, v, _INSTANT_ARGS)))
    return _Story(group, req.tid, req.comm, top)


def _load_story(ld: Load, v: LoadVerdict | None, last: int) -> _Story:
    end = ld.end_ns if ld.end_ns is not None else max(last, ld.start_ns)
    args = load_fields(ld, v, _LOAD_ARGS)
    if ld.end_ns is None:
        args["unfinished"] = True
    # udev's loads are named by their device: a per-CPU storm reads cpu0, cpu1, ...
    name = ld.syscall if ld.device is None else \
        f"{ld.syscall} {ld.device.devpath.rsplit('/', 1)[-1]}"
    top = _Slice(name, "load", ld.start_ns, end, args)
    init = _child("init", "init", ld.init_start_ns, ld.init_end_ns, top,
                  {"init_ret": ld.init_ret})
    if init is not None:
        top.children.append(init)
    return _Story(load_group(ld), ld.tid, ld.comm, top)


def _emit(s: _Slice, pid: int, tid: int, out: list[dict[str, Any]]) -> None:
    out.append({"ph": "X", "name": s.name, "cat": s.cat, "pid": pid, "tid": tid,
                "ts": _us(s.start), "dur": _us(s.end - s.start), "args": s.args})
    for c in s.children:
        _emit(c, pid, tid, out)
    for name, at, args in s.instants:
        out.append({"ph": "i", "s": "t", "name": name, "cat": "duplicate", "pid": pid,
                    "tid": tid, "ts": _us(at), "args": args})


def _meta(name: str, pid: int, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": args}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _sort_key(ev: dict[str, Any]) -> tuple[int, float, float]:
    """Metadata first, then by time; at one time, longer (outer) slices first."""
    if ev["ph"] == "M":
        return (0, 0.0, 0.0)
    return (1, ev["ts"], -ev.get("dur", 0.0))


def chrome_trace(rep: Replay, header: dict[str, Any]) -> dict[str, Any]:
    """The Chrome trace JSON object for a replayed trace (see the module docstring)."""
    last = _last_ns(rep)
    # one process track per module: a request goes where its modprobe's loads went
    modules = bymodule.request_modules(rep.requests, rep.loads)
    stories = [_request_story(r, v, last, modules.get(r.id)) for r, v in rep.requests]
    stories += [_load_story(ld, v, last) for ld, v in rep.loads]
    freed = list(rep.judge.freed)

    first: dict[str, int] = {}
    for st in stories:
        first[st.group] = min(first.get(st.group, st.top.start), st.top.start)
    for ts, name in freed:
        first.setdefault(name or "(unknown module)", ts)
    groups = sorted(first, key=lambda g: (first[g], g))
    pids = {g: i for i, g in enumerate(groups, 1)}

    # Thread tracks: (group, real tid) -> lanes; each lane keeps the end of its last story.
    next_tid = len(groups) + 1
    lanes: dict[tuple[str, int], list[tuple[int, int]]] = {}  # -> [(chrome tid, busy until)]
    events: list[dict[str, Any]] = []
    meta: list[dict[str, Any]] = []
    for st in sorted(stories, key=lambda s: (s.top.start, -s.top.end)):
        pid = pids[st.group]
        key = (st.group, st.tid)
        lane_list = lanes.setdefault(key, [])
        for i, (ctid, busy) in enumerate(lane_list):
            if busy <= st.top.start:
                lane_list[i] = (ctid, st.top.end)
                break
        else:
            ctid = next_tid
            next_tid += 1
            lane_list.append((ctid, st.top.end))
            suffix = f" #{len(lane_list)}" if len(lane_list) > 1 else ""
            meta.append(_meta("thread_name", pid, ctid, {"name": f"{st.comm}[{st.tid}]{suffix}"}))
        _emit(st.top, pid, ctid, events)

    for ts, name in freed:  # process-scoped: on the process track (tid = pid, never used)
        pid = pids[name or "(unknown module)"]
        events.append({"ph": "i", "s": "p", "name": f"module_free {name}", "cat": "module",
                       "pid": pid, "tid": pid, "ts": _us(ts), "args": {"module": name}})

    for g in groups:
        meta.append(_meta("process_name", pids[g], None, {"name": g}))
        meta.append(_meta("process_sort_index", pids[g], None, {"sort_index": pids[g]}))

    mods = {k: module_json(m) for k, m in sorted(rep.judge.model.modules().items())}
    events.sort(key=_sort_key)
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ms",
        "metadata": {
            "generator": "kmodtrace",
            "kernel": header.get("kernel"),
            "profile": rep.judge.model.actual.name,
            "tool_version": header.get("tool_version"),
            "trace_id": header.get("id"),
            "start_time": header.get("start_time"),
            "clock": "CLOCK_MONOTONIC",
            "modules": mods,
        },
    }


def write_chrome_trace(rep: Replay, header: dict[str, Any], path: str,
                       keep: str | None = None) -> None:
    """Write chrome_trace() to `path` (open it with ui.perfetto.dev or chrome://tracing),
    opened as `record -o` opens its trace, never over KEEP (the trace read)."""
    doc = chrome_trace(rep, header)
    with os.fdopen(open_output(path, "Perfetto trace", keep), "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
