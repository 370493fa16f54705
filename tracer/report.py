"""How stories, verdicts and summaries look: bcc-style lines, JSON, tables."""

from __future__ import annotations

import errno
import json
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from tracer import bymodule, early, reportdata
from tracer.model import (
    LoadVerdict,
    ModuleStats,
    RequestVerdict,
    json_fields,
    kernel_disagrees,
    profile_json,
    profile_note,
    summary_fields,
)
from tracer.record import Procs, Trace
from tracer.reportdata import Loading, Loss, Report
from tracer.session import Replay
from tracer.stories import Load, Request, decode_wait_status

# `report --json` document version: tracer/report.schema.json's, which this issue's
# successors change by adding keys there (tests/test_schema.py holds the two together).
SCHEMA_VERSION = 2
# Default lines fit a terminal this wide; --wide prints every detail.
LINE_WIDTH = 100

# Column widths (TIME, PID, COMM, WHAT, NAME, RET, LAT): full, and within LINE_WIDTH.
_WIDE = (10, 7, 16, 6, 22, 10, 8)
_NARROW = (10, 7, 16, 5, 18, 6, 8)


def _columns(wide: bool) -> tuple[int, ...]:
    return _WIDE if wide else _NARROW


def header(wide: bool = False) -> str:
    """The column line above request_line()/load_line() lines."""
    t, p, c, w, n, r, lat = _columns(wide)
    return (f"{'TIME(s)':<{t}} {'PID':<{p}} {'COMM':<{c}} {'WHAT':<{w}} {'NAME':<{n}} "
            f"{'RET':<{r}} {'LAT(ms)':>{lat}}  DETAIL")


HEADER = header(wide=True)


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.2f}"


def errno_name(ret: int | None) -> str:
    if ret is None:
        return "?"
    if ret == 0:
        return "0"
    if ret < 0:
        return errno.errorcode.get(-ret, str(ret))
    return str(ret)


def request_ret(req: Request) -> str:
    if req.ret is None:
        return "?"
    if req.ret > 0:  # a raw wait status from modprobe
        return decode_wait_status(req.ret).replace(" ", "")
    return errno_name(req.ret)


def _line(start_s: float, pid: int, comm: str, what: str, name: str, ret: str,
          lat: str, detail: list[str], wide: bool, width: int) -> str:
    t, p, c, w, n, r, la = _columns(wide)
    head = (f"{start_s:<{t}.6f} {pid:<{p}} {comm[:c]:<{c}} {what:<{w}} {name[:n]:<{n}} "
            f"{ret:<{r}} {lat:>{la}}  ")
    if wide:
        return head + " ".join(detail)
    return (head + _fit(detail, width - len(head)))[:width]


def _fit(items: list[str], room: int) -> str:
    """As many items as fit in room columns, in order; "+" where some were left out."""
    out = ""
    for item in items:
        cand = f"{out} {item}" if out else item
        if len(cand) > room:
            more = f"{out} +" if out else "+"
            return more if len(more) <= room else out
        out = cand
    return out


def request_line(req: Request, v: RequestVerdict | None, t0_ns: int, wide: bool = False,
                 width: int = LINE_WIDTH) -> str:
    """One request as a bcc-style line: within `width` columns, or all detail if wide."""
    what = "REQ" if req.wait else "REQNW"
    detail = []
    if wide:
        if req.rejected:
            detail.append("rejected before module_request")
        if req.queue_ns is not None and req.queue_ns > 1_000_000:
            detail.append(f"queued={_ms(req.queue_ns)}ms")
        if req.modprobe_pid is not None:
            status = ("" if req.modprobe_exit is None
                      else f" {decode_wait_status(req.modprobe_exit)}")
            detail.append(f"modprobe={req.modprobe_pid}{status}")
        if req.load_ids:
            detail.append(f"loads={len(req.load_ids)}")
        if v is not None and v.verdict == "duplicate":
            detail.append(f"duplicate request for module {req.name} (dups: ret "
                          f"{v.predicted_ret}, wait {_ms(v.would_wait_ns)}ms)")
        elif v is not None and not (req.rejected and v.verdict == "rejected"):
            detail.append(v.verdict)
        if kernel_disagrees(req, v):
            detail.append(f"!k kernel: {req.kernel_verdict} ret {req.kernel_ret}")
    else:  # the verdict first: it is what the line is for
        if v is not None:  # "!k": the kernel's own verdict differs (--wide says how)
            detail.append(("dup" if v.verdict == "duplicate" else v.verdict)
                          + ("!k" if kernel_disagrees(req, v) else ""))
        if req.rejected and (v is None or v.verdict != "rejected"):
            detail.append("rejected")
        if req.modprobe_pid is not None:
            detail.append(f"mp={req.modprobe_pid}")
        if req.load_ids:
            detail.append(f"loads={len(req.load_ids)}")
        if req.queue_ns is not None and req.queue_ns > 1_000_000:
            detail.append(f"q={_ms(req.queue_ns)}ms")
    return _line((req.start_ns - t0_ns) / 1e9, req.pid, req.comm, what, req.display_name,
                 request_ret(req), _ms(req.duration_ns), detail, wide, width)


def load_line(load: Load, v: LoadVerdict | None, t0_ns: int, wide: bool = False,
              width: int = LINE_WIDTH) -> str:
    """One load attempt as a bcc-style line: within `width` columns, or all detail if wide."""
    what = "FINIT" if load.syscall == "finit_module" else "INIT"
    ret = errno_name(load.ret)
    detail = []
    if wide:
        if load.file:
            detail.append(f"file={load.file} ino={load.ino}")
        detail.append(f"size={load.size}")
        if load.init_ns is not None:
            detail.append(f"init={_ms(load.init_ns)}ms")
        if load.request_id is not None:
            detail.append(f"for-request=#{load.request_id} alias={load.alias}")
        if load.device is not None:
            detail.append(f"device={load.device.devpath} ({load.device.subsystem}) "
                          f"modalias={load.device.modalias or '?'}")
        if v is not None:
            detail.append(v.outcome + (f" ({v.rule})" if v.rule else ""))
            if v.converged:
                detail.append(f"converged on #{v.winner_id}")
            if v.wasted_bytes:
                detail.append(f"wasted={v.wasted_bytes}B")
            if v.len_unknown:
                detail.append("len unknown")
    else:  # what RET does not say already, the cost first
        if v is not None and v.outcome not in (ret, "loaded"):
            detail.append(v.outcome)
        if v is not None and v.converged:
            detail.append("converged")
        if v is not None and v.wasted_bytes:
            detail.append(f"wasted={human_bytes(v.wasted_bytes)}")
        if load.request_id is not None:
            detail.append(f"req=#{load.request_id}")
        if load.device is not None:  # udev's: which device, the path's tail names it
            detail.append(f"dev={load.device.devpath.rsplit('/', 1)[-1]}")
        if load.init_ns is not None:
            detail.append(f"init={_ms(load.init_ns)}ms")
    return _line((load.start_ns - t0_ns) / 1e9, load.pid, load.comm, what,
                 load.module or bymodule.UNNAMED, ret, _ms(load.duration_ns), detail, wide,
                 width)


def proc_json(procs: Procs, pid: int, comm: str) -> dict[str, Any]:
    """The requester's or loader's cmdline and parents, as the recorder saw them."""
    cmdline, parents = procs.get((pid, comm), ("", ()))
    return {"cmdline": cmdline, "parents": list(parents)}


# --- story fields: each defined once, here; `report --json`, `live --json` and the Perfetto
# trace's args pick theirs by name, in their own order.

RequestField = Callable[[Request, RequestVerdict | None], Any]
LoadField = Callable[[Load, LoadVerdict | None], Any]


def _verdict(attr: str) -> Callable[[Any, Any], Any]:
    """A field of the verdict, None where the story has none."""
    return lambda _s, v: None if v is None else getattr(v, attr)


REQUEST_FIELDS: dict[str, RequestField] = {
    "type": lambda r, v: "request", "id": lambda r, v: r.id,
    "name": lambda r, v: r.display_name, "wait": lambda r, v: r.wait,
    "pid": lambda r, v: r.pid, "tid": lambda r, v: r.tid, "comm": lambda r, v: r.comm,
    "ppid": lambda r, v: r.ppid, "ip": lambda r, v: r.ip, "ret": lambda r, v: r.ret,
    "status": lambda r, v: request_ret(r),  # the return as the text shows it
    "start_ns": lambda r, v: r.start_ns, "queue_ns": lambda r, v: r.queue_ns,
    "duration_ns": lambda r, v: r.duration_ns, "rejected": lambda r, v: r.rejected,
    "verdict": _verdict("verdict"), "predicted_ret": _verdict("predicted_ret"),
    "anchor_id": _verdict("anchor_id"), "actual_ret": _verdict("actual_ret"),
    "would_wait_ns": _verdict("would_wait_ns"), "modprobe_saved": _verdict("modprobe_saved"),
    "kernel_verdict": lambda r, v: r.kernel_verdict, "kernel_ret": lambda r, v: r.kernel_ret,
    "modprobe_pid": lambda r, v: r.modprobe_pid,
    "modprobe_status": lambda r, v: r.modprobe_exit,  # the raw wait status
    "modprobe_name": lambda r, v: r.umh_name, "load_ids": lambda r, v: list(r.load_ids),
}

LOAD_FIELDS: dict[str, LoadField] = {
    "type": lambda ld, v: "load", "id": lambda ld, v: ld.id,
    "module": lambda ld, v: ld.module or None,  # None: the kernel could not name it
    "syscall": lambda ld, v: ld.syscall,
    "pid": lambda ld, v: ld.pid, "tid": lambda ld, v: ld.tid, "comm": lambda ld, v: ld.comm,
    "ppid": lambda ld, v: ld.ppid, "file": lambda ld, v: ld.file,
    "inode": lambda ld, v: None if ld.inode is None else list(ld.inode),
    "ino": lambda ld, v: ld.ino, "size": lambda ld, v: ld.size,
    "flags": lambda ld, v: ld.flags, "ret": lambda ld, v: ld.ret,
    "errno": lambda ld, v: errno_name(ld.ret), "start_ns": lambda ld, v: ld.start_ns,
    "duration_ns": lambda ld, v: ld.duration_ns, "loaded": lambda ld, v: ld.loaded,
    "init_ns": lambda ld, v: ld.init_ns, "init_ret": lambda ld, v: ld.init_ret,
    "request_id": lambda ld, v: ld.request_id, "verdict": _verdict("outcome"),
    "rule": _verdict("rule"), "wasted_bytes": _verdict("wasted_bytes"),
    "converged": _verdict("converged"), "len_unknown": _verdict("len_unknown"),
    "winner_id": _verdict("winner_id"), "would_converge": _verdict("would_converge"),
    "bytes_saved": _verdict("bytes_saved"), "alias": lambda ld, v: load_alias(ld) or None,
    "devpath": lambda ld, v: None if ld.device is None else ld.device.devpath,
    "subsystem": lambda ld, v: None if ld.device is None else ld.device.subsystem,
}

# What `report --json` and `live --json` write per story (README's schema), in order.
REQUEST_JSON = ("type", "id", "name", "wait", "pid", "tid", "comm", "ppid", "ip", "caller",
                "ret", "start_ns", "queue_ns", "duration_ns", "rejected", "verdict",
                "predicted_ret", "kernel_verdict", "kernel_ret", "modprobe_pid",
                "modprobe_status", "modprobe_name", "load_ids")
LOAD_JSON = ("type", "id", "module", "syscall", "pid", "tid", "comm", "ppid", "file", "inode",
             "size", "flags", "ret", "start_ns", "duration_ns", "loaded", "init_ns",
             "init_ret", "request_id", "verdict", "converged", "wasted_bytes", "len_unknown",
             "alias", "devpath", "subsystem")


def request_fields(req: Request, v: RequestVerdict | None,
                   names: Iterable[str]) -> dict[str, Any]:
    return {n: REQUEST_FIELDS[n](req, v) for n in names}


def load_fields(load: Load, v: LoadVerdict | None, names: Iterable[str]) -> dict[str, Any]:
    return {n: LOAD_FIELDS[n](load, v) for n in names}


def request_json(req: Request, v: RequestVerdict | None,
                 ksyms: Mapping[int, str] | None = None) -> dict[str, Any]:
    # "caller" needs the trace's symbols: the one field that is not the story's own
    out = request_fields(req, v, (n for n in REQUEST_JSON if n != "caller"))
    out["caller"] = (ksyms or {}).get(req.ip, hex(req.ip))
    return {n: out[n] for n in REQUEST_JSON}


def load_json(load: Load, v: LoadVerdict | None) -> dict[str, Any]:
    return load_fields(load, v, LOAD_JSON)


def load_alias(load: Load) -> str:
    """What was looked up to find this module: the request modprobe served, or the
    MODALIAS of the device udev loaded it for."""
    return load.alias or (load.device.modalias if load.device is not None else "")


SUMMARY_COLUMNS = tuple(f.metadata["column"] for f in summary_fields())


def summary_rows(mods: Mapping[str, ModuleStats]) -> list[tuple[str, ...]]:
    """One row per name; each ModuleStats column rendered by its unit."""
    def cell(m: ModuleStats, name: str, unit: str, of: str | None) -> str:
        v = getattr(m, name)
        if of is not None:
            return f"{v}/{getattr(m, of)}"
        if unit == "errnos":
            return errno_counts(v, m.converged_failures if name == "load_failures" else {})
        if unit == "bytes":
            return human_bytes(v)
        if unit == "ns":
            return _ms(v)
        if unit == "name":
            return v or bymodule.UNNAMED
        return f"{v:.1f}" if unit == "ms" else str(v)

    cols = [(f.name, f.metadata["unit"], f.metadata["of"]) for f in summary_fields()]
    return [tuple(cell(m, *c) for c in cols) for _, m in sorted(mods.items())]


def errno_counts(failures: Mapping[str, int], converged: Mapping[str, int]) -> str:
    """Failures per errno, the converged waiters among them marked:
    "ENODEV:16 (15 converged),EEXIST:1"."""
    return ",".join(f"{k}:{n}" + (f" ({converged[k]} converged)" if converged.get(k) else "")
                    for k, n in sorted(failures.items())) or "0"


def human_bytes(n: int, sep: str = "") -> str:
    """1536 -> '1.5KiB' (tables) or, with sep=" ", '1.5 KiB' (legends)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n}{sep}B" if unit == "B" else f"{size:.1f}{sep}{unit}"
        size /= 1024
    return f"{size:.1f}{sep}GiB"


def table_lines(columns: tuple[str, ...], rows: list[tuple[str, ...]],
                width: int | None = None) -> list[str]:
    """A left-aligned table; with a width, the columns (from the left) that fit in it."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    keep = len(columns)
    if width is not None:
        used, keep = -2, 0
        for w in widths:
            if used + 2 + w > width:
                break
            used, keep = used + 2 + w, keep + 1
    out = ["  ".join(c.ljust(w) for c, w in zip(columns[:keep], widths, strict=False)).rstrip()]
    out += ["  ".join(x.ljust(w) for x, w in zip(r[:keep], widths, strict=False)).rstrip()
            for r in rows]
    if keep < len(columns):
        out.append(f"(--wide adds {', '.join(columns[keep:])})"[:width])
    return out


def module_json(m: ModuleStats) -> dict[str, Any]:
    """modules{name} of `report --json`: the ModuleStats fields marked json."""
    out: dict[str, Any] = {}
    for f in json_fields():
        v = getattr(m, f.name)
        out[f.name] = dict(v) if isinstance(v, dict) else v
    return out


# --- the views of a Report: `report`, `report --json`, `boot show` ------------------------


def load(path: str, announce: str | None = None) -> tuple[Trace, Replay]:
    """Read and replay a trace (reportdata.replay_file), for callers that want the stories
    with their judge; the views take reportdata.read()'s Report."""
    return reportdata.replay_file(path, announce)


def document(r: Report) -> dict[str, Any]:
    """The `report --json` document: tracer/report.schema.json declares every key (the
    README's schema section is made from it). write_document() writes the same document
    without holding it: `report --json` streams it."""
    return {**_document_head(r), "requests": list(_requests_json(r)),
            "loads": list(_loads_json(r)), **_document_tail(r)}


def _requests_json(r: Report) -> Iterator[dict[str, Any]]:
    """request_json() | proc_json() of each request, made in one dict (a tenth of a
    1M-event document's time went to the generator, the reordering and the merge)."""
    ksyms = r.ksyms

    def caller(q: Request, _v: object) -> str:
        return ksyms.get(q.ip, hex(q.ip))

    fields = [(n, caller if n == "caller" else REQUEST_FIELDS[n]) for n in REQUEST_JSON]
    yield from _stories_json(r.requests, fields, r.procs)


def _loads_json(r: Report) -> Iterator[dict[str, Any]]:
    """load_json() | proc_json() of each load, made in one dict."""
    yield from _stories_json(r.loads, [(n, LOAD_FIELDS[n]) for n in LOAD_JSON], r.procs)


def _stories_json(stories: Iterable[tuple[Any, Any]], fields: list[tuple[str, Any]],
                  procs: Procs) -> Iterator[dict[str, Any]]:
    for s, v in stories:
        out = {n: f(s, v) for n, f in fields}
        out["cmdline"], parents = procs.get((s.pid, s.comm), ("", ()))
        out["parents"] = list(parents)
        yield out


# write_document() hands its buffer on past this many bytes
_WRITE_CHUNK = 1 << 20


def write_document(r: Report, write: Callable[[bytes], object]) -> None:
    """document(R) as JSON through WRITE, in chunks of about a MiB, never whole: a story's
    object is made, encoded and dropped before the next (a 1M-event trace's document was
    2.9 GB in memory). The document is json-equal to json.dumps(document(r), indent=1),
    keys in the same order, and ASCII as that is; only the whitespace differs: each story
    of `requests` and `loads` is one compact line (the rest is indented as before)."""
    head = json.dumps(_document_head(r), indent=1)
    tail = json.dumps(_document_tail(r), indent=1)
    buf = bytearray(head[:-2].encode())  # without its closing "\n}"
    for key, stories in (("requests", _requests_json(r)), ("loads", _loads_json(r))):
        buf += b',\n "' + key.encode() + b'": ['
        sep = b"\n  "
        for story in stories:
            buf += sep
            sep = b",\n  "
            _encode_into(story, buf)
            if len(buf) > _WRITE_CHUNK:
                write(bytes(buf))
                buf.clear()
        if sep != b"\n  ":  # json.dumps's empty list is "[]"
            buf += b"\n ]"
        else:
            buf += b"]"
    buf += b"," + tail[1:].encode() + b"\n"  # the tail's "\n ..." without its "{"
    write(bytes(buf))


def _encode_into(obj: dict[str, Any], buf: bytearray) -> None:
    """OBJ as one compact JSON object at the end of BUF: orjson, unless it refuses (a lone
    surrogate, an integer past 64 bits) or writes what is not ASCII, where the stdlib's
    json writes it as document()'s dump does (\\uNNNN escapes)."""
    try:
        out = orjson.dumps(obj)
        if out.isascii():
            buf += out
            return
    except TypeError:
        pass
    buf += json.dumps(obj, separators=(",", ":")).encode()


def _document_head(r: Report) -> dict[str, Any]:
    """document()'s keys before `requests`."""
    loss = r.loss
    return {
        "schema_version": SCHEMA_VERSION,
        "kernel": r.kernel, "profile": r.profile.name,
        "lost_events": loss.lost, "missed_probes": loss.missed,
        "missed_by_hook": None if loss.by_hook is None else dict(loss.by_hook),
        "complete": loss.complete, "first_bad_line": loss.first_bad_line,
        "bad_lines": loss.bad_lines, "len_unknown": loss.len_unknown,
        **profile_json(r.profile),
        "filter": filter_json(r),
    }


def _document_tail(r: Report) -> dict[str, Any]:
    """document()'s keys after `loads`."""
    modules = dict(r.modules)
    unnamed_model = modules.pop("", None)  # the model keys unnamed loads (and "") as ""
    return {
        "modules": {k: module_json(m) for k, m in modules.items()},
        "by_module": {k: row.to_json() for k, row in r.by_module.items()},
        "unnamed": None if r.unnamed is None and unnamed_model is None else {
            "loads": None if r.unnamed is None else r.unnamed.to_json(),
            "model": None if unnamed_model is None else module_json(unnamed_model)},
        "loading": loading_json(r.loading),
        "early": early_json(r.early, r.early_events),
        **advice_json(r),
    }


def advice_json(r: Report) -> dict[str, Any]:
    """`advice` (tracer/advice.py, per repeated module) and the modules.alias it read."""
    from tracer import advice

    a = advice.build(r)
    return {"advice": a.to_json(),
            "modules_alias": {"path": a.modules_alias or None, "found": a.alias_found}}


def filter_json(r: Report) -> dict[str, Any] | None:
    """`filter`: what -p, -m and -x kept, and how much the whole trace had."""
    n = r.narrowed
    if n is None:
        return None
    f = n.filter
    return {"pid": f.pid, "module": f.module, "failed_only": f.failed_only,
            "total_requests": n.requests, "total_loads": n.loads, "total_modules": n.modules}


# The early record's keys (tracer/early.py drain()) by type: the trace is read as it is, so
# the document keeps these only, each null where the record lacks it or holds another type.
_EARLY_KEYS: dict[str, type] = {
    "attach_begin_ns": int, "attach_end_ns": int, "configured": bool, "probes": list,
    "ignored_probes": list, "gap": str, "clock": str, "clock_offset_ns": int,
    "overrun": int, "probes_off_ns": int, "events": int, "seen_by_both": int,
    "after_attach": int, "unparsed_lines": int, "first_ns": int, "not_early": list,
    "switched_off": bool,
}


def _early_value(v: Any, kind: type) -> Any:
    if kind is list:
        return [x for x in v if isinstance(x, str)] if isinstance(v, list) else None
    return v if type(v) is kind else None


def early_json(info: Mapping[str, Any] | None, events_in_trace: int) -> dict[str, Any] | None:
    """`early`: what the kernel's boot-time trace gave (null: the trace has no such record)."""
    if info is None:
        return None
    return {k: _early_value(info.get(k), kind) for k, kind in _EARLY_KEYS.items()} | {
        "events_in_trace": events_in_trace}


def filter_lines(r: Report) -> list[str]:
    """What -p, -m and -x left out, in one line (none without a filter)."""
    n = r.narrowed
    if n is None:
        return []
    return [f"only {n.filter.describe()}: {len(r.requests)} of {n.requests} requests, "
            f"{len(r.loads)} of {n.loads} loads, {len(r.by_module)} of {n.modules} modules"]


def _wrap(line: str, wide: bool) -> list[str]:
    return [line] if wide else textwrap.wrap(line, LINE_WIDTH)


def hook_lines(loss: Loss) -> list[str]:
    """Which hooks the kernel skipped, by name (none: no line)."""
    if not loss.by_hook:
        return []
    return ["missed by hook: " + ", ".join(f"{h} {n}" for h, n in sorted(loss.by_hook.items()))]


def damage_lines(loss: Loss) -> list[str]:
    """What a killed recorder or a damaged file cost the trace."""
    out = []
    if not loss.complete:
        out.append("trace has no trailer: the recorder was killed; all written events used")
    if loss.first_bad_line is not None:
        why = f": {loss.first_bad_why}" if loss.first_bad_why else ""
        out.append(f"{loss.bad_lines} unreadable line(s), first at line {loss.first_bad_line}"
                   f"{why}; not used")
    if loss.len_unknown:
        out.append(f"{loss.len_unknown} failed load(s) with len unknown (no module_sig_check() "
                   "return): file size used")
    return out


def counts_line(loss: Loss) -> str:
    def count(n: int | None) -> str:
        return "unknown" if n is None else str(n)

    return f"{loss.events} events, lost {count(loss.lost)}, missed {count(loss.missed)}"


def warning_lines(loss: Loss) -> list[str]:
    """The one warning every view gives when its counts are lower bounds."""
    if loss.dropped:
        return ["WARNING: events were dropped; counts above are lower bounds."]
    if loss.unknown:
        return ["WARNING: the trace does not say what was dropped; counts above are lower "
                "bounds."]
    return []


def render_text(r: Report, wide: bool = False) -> list[str]:
    """The text report: one line per story in time order, the trace's state, the summary.

    Every line fits LINE_WIDTH columns unless wide.
    """
    t0 = r.t0_ns
    stories = [(q.start_ns, request_line(q, v, t0, wide)) for q, v in r.requests]
    stories += [(ld.start_ns, load_line(ld, v, t0, wide)) for ld, v in r.loads]
    out = [header(wide), *(line for _, line in sorted(stories)), ""]
    out.append(f"kernel {r.kernel} profile {r.profile.name}: {counts_line(r.loss)}")
    out += filter_lines(r)
    out += hook_lines(r.loss)
    out += _wrap(profile_note(r.profile), wide)
    out += _wrap(early.summary(r.early, r.early_events), wide)
    out += damage_lines(r.loss)
    out += module_summary(r, wide)
    out += advice_lines(r, wide)
    out += warning_lines(r.loss)
    return out


def module_summary(r: Report, wide: bool) -> list[str]:
    """The exit summary: the attempts and their cost, one row per module, requests joined
    to the modules they led to; with wide, also the model's table per request string
    (dups.c's own keys)."""
    out = ["", "per module:", *_wrap(headline(r.loading)[0], wide)]
    out += table_lines(bymodule.COLUMNS, bymodule.table_rows(
        r.by_module, 60 if wide else 18, r.unnamed), None if wide else LINE_WIDTH)
    if wide:
        out += ["", "per request string and module name (the model's keys, as dups.c's):"]
        out += table_lines(SUMMARY_COLUMNS, summary_rows(r.modules), None)
    return out


# --- `boot show`: the boot debugger's questions at a glance ----------------------------------


def loading_json(lo: Loading) -> dict[str, Any]:
    """`loading` of `report --json`."""
    return {
        "traced_from_ns": lo.traced_from_ns, "tracer_attached_ns": lo.tracer_attached_ns,
        "traced_to_ns": lo.traced_to_ns, "busy_ns": lo.busy_ns, "attempts": lo.attempts,
        "repeated_modules": list(lo.repeated_modules), "wasted_bytes": lo.wasted_bytes,
    }


def headline(lo: Loading) -> list[str]:
    """The answers at a glance: what repeated, what it cost, how much of the boot it took."""
    out = [f"{lo.attempts} load attempts for {lo.modules} modules; "
           f"{len(lo.repeated_modules)} modules tried more than once ({lo.extra_attempts} "
           f"extra attempts); {human_bytes(lo.wasted_bytes)} of vmalloc wasted"]
    if lo.busy_ns is not None:
        traced = lo.traced_ns or 0
        share = f" ({100 * lo.busy_ns / traced:.1f} % of the {traced / 1e9:.2f} s traced)" \
            if traced > 0 else ""
        out.append(f"module loading in flight {lo.busy_ns / 1e9:.2f} s{share}; "
                   f"{lo.load_ns / 1e9:.2f} s in (f)init_module calls in all")
    return out


def render_boot(r: Report, wide: bool = False) -> list[str]:
    """Which modules were tried more than once and by which devices, the vmalloc they
    wasted, their first-to-last span and the boot's share spent loading modules."""
    lo = r.loading
    start, end = lo.traced_from_ns, lo.traced_to_ns
    out = [f"boot {(r.boot_id or '?')[:8]}  kernel {r.kernel}  "
           f"{r.cpus} CPUs  profile {r.profile.name}"]
    if start is not None:
        out.append(f"traced from {start / 1e9:.2f} s after boot"
                   + (f" to {end / 1e9:.2f} s" if end is not None else " (no trailer)"))
    out += [counts_line(r.loss), *hook_lines(r.loss), *damage_lines(r.loss)]
    out += filter_lines(r)
    out += _wrap(early.summary(r.early, r.early_events), wide)
    for line in headline(lo):
        out += _wrap(line, wide)
    out.append("")
    width = None if wide else LINE_WIDTH
    out += table_lines(bymodule.COLUMNS, bymodule.table_rows(
        r.by_module, 60 if wide else 18, r.unnamed), width)
    out += _wrap(profile_note(r.profile), wide)
    out += advice_lines(r, wide)
    out += warning_lines(r.loss)
    return out


def advice_lines(r: Report, wide: bool) -> list[str]:
    """Why each repeated module repeated and what would stop it (tracer/advice.py)."""
    from tracer import advice

    return advice.lines(advice.build(r), wide, LINE_WIDTH)
