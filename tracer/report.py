"""How stories, verdicts and summaries look: bcc-style lines, JSON, tables."""

from __future__ import annotations

import errno
import textwrap
from typing import Any

from tracer import bymodule, early
from tracer.kernel import announce_form
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
from tracer.record import Procs, Trace, read_trace
from tracer.session import Replay, listed_hooks, replay
from tracer.stories import Load, Request, decode_wait_status

# `report --json` document version (README: "report --json schema (version 1)").
REPORT_VERSION = 1
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
        elif v is not None:
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
            if v.wasted_bytes:
                detail.append(f"wasted={v.wasted_bytes}B")
    else:  # what RET does not say already, the cost first
        if v is not None and v.outcome not in (ret, "loaded"):
            detail.append(v.outcome)
        if v is not None and v.wasted_bytes:
            detail.append(f"wasted={human_bytes(v.wasted_bytes)}")
        if load.request_id is not None:
            detail.append(f"req=#{load.request_id}")
        if load.device is not None:  # udev's: which device, the path's tail names it
            detail.append(f"dev={load.device.devpath.rsplit('/', 1)[-1]}")
        if load.init_ns is not None:
            detail.append(f"init={_ms(load.init_ns)}ms")
    return _line((load.start_ns - t0_ns) / 1e9, load.pid, load.comm, what, load.module, ret,
                 _ms(load.duration_ns), detail, wide, width)


def proc_json(procs: Procs, pid: int, comm: str) -> dict[str, Any]:
    """The requester's or loader's cmdline and parents, as the recorder saw them."""
    cmdline, parents = procs.get((pid, comm), ("", ()))
    return {"cmdline": cmdline, "parents": list(parents)}


def request_json(req: Request, v: RequestVerdict | None,
                 ksyms: dict[int, str] | None = None) -> dict[str, Any]:
    return {
        "type": "request", "id": req.id, "name": req.display_name, "wait": req.wait,
        "pid": req.pid, "tid": req.tid, "comm": req.comm, "ppid": req.ppid, "ip": req.ip,
        "caller": (ksyms or {}).get(req.ip, hex(req.ip)),
        "ret": req.ret, "start_ns": req.start_ns, "queue_ns": req.queue_ns,
        "duration_ns": req.duration_ns, "rejected": req.rejected,
        "verdict": None if v is None else v.verdict,
        "predicted_ret": None if v is None else v.predicted_ret,
        "kernel_verdict": req.kernel_verdict, "kernel_ret": req.kernel_ret,
        "modprobe_pid": req.modprobe_pid, "modprobe_status": req.modprobe_exit,
        "modprobe_name": req.umh_name, "load_ids": list(req.load_ids),
    }


def load_json(load: Load, v: LoadVerdict | None) -> dict[str, Any]:
    return {
        "type": "load", "id": load.id, "module": load.module, "syscall": load.syscall,
        "pid": load.pid, "tid": load.tid, "comm": load.comm, "ppid": load.ppid,
        "file": load.file, "inode": None if load.inode is None else list(load.inode),
        "size": load.size, "flags": load.flags, "ret": load.ret, "start_ns": load.start_ns,
        "duration_ns": load.duration_ns, "loaded": load.loaded, "init_ns": load.init_ns,
        "init_ret": load.init_ret, "request_id": load.request_id,
        "verdict": None if v is None else v.outcome,
        "wasted_bytes": None if v is None else v.wasted_bytes,
        "alias": load_alias(load) or None,
        "devpath": None if load.device is None else load.device.devpath,
        "subsystem": None if load.device is None else load.device.subsystem,
    }


def load_alias(load: Load) -> str:
    """What was looked up to find this module: the request modprobe served, or the
    MODALIAS of the device udev loaded it for."""
    return load.alias or (load.device.modalias if load.device is not None else "")


SUMMARY_COLUMNS = tuple(f.metadata["column"] for f in summary_fields())


def summary_rows(mods: dict[str, ModuleStats]) -> list[tuple[str, ...]]:
    """One row per name; each ModuleStats column rendered by its unit."""
    def cell(m: ModuleStats, name: str, unit: str, of: str | None) -> str:
        v = getattr(m, name)
        if of is not None:
            return f"{v}/{getattr(m, of)}"
        if unit == "errnos":
            return ",".join(f"{k}:{n}" for k, n in sorted(v.items())) or "0"
        if unit == "bytes":
            return human_bytes(v)
        if unit == "ns":
            return _ms(v)
        return f"{v:.1f}" if unit == "ms" else str(v)

    cols = [(f.name, f.metadata["unit"], f.metadata["of"]) for f in summary_fields()]
    return [tuple(cell(m, *c) for c in cols) for _, m in sorted(mods.items())]


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


# --- the report document: what `report`, `boot show` and the lab's `vm` show ---------------


def load(path: str, announce: str | None = None) -> tuple[Trace, Replay]:
    """Read the trace in PATH and replay it through the model (with the dups.c announce
    form ANNOUNCE over the recorded one, if given); TraceFormatError if it is not a trace."""
    trace = read_trace(path)
    if announce is not None:
        trace.header["features"] = trace.features.with_announce(
            announce_form(announce)).to_dict()
    return trace, replay(trace.events, trace.features.profile, modaliases=trace.modaliases,
                         hooks=listed_hooks(trace.header))


def document(trace: Trace, rep: Replay) -> dict[str, Any]:
    """The `report --json` document (see the README for the schema)."""
    trailer = trace.trailer or {}
    ksyms = trace.ksyms
    rows = bymodule.join(rep.requests, rep.loads)
    return {
        "version": REPORT_VERSION,
        "kernel": trace.header.get("kernel"), "profile": trace.features.profile.name,
        "lost_events": trailer.get("lost"), "missed_probes": trailer.get("missed"),
        "missed_by_hook": trailer.get("misses"),
        "complete": trace.trailer is not None, "first_bad_line": trace.first_bad_line,
        "bad_lines": trace.bad_lines, **profile_json(trace.features.profile),
        "requests": [request_json(r, v, ksyms) | proc_json(trace.procs, r.pid, r.comm)
                     for r, v in rep.requests],
        "loads": [load_json(ld, v) | proc_json(trace.procs, ld.pid, ld.comm)
                  for ld, v in rep.loads],
        "modules": {k: module_json(m) for k, m in rep.judge.model.modules().items()},
        "by_module": {k: row.to_json() for k, row in rows.items()},
        "loading": loading_json(trace, rep, rows),
        "early": None if trace.early is None else {
            k: v for k, v in trace.early.items() if k != "type"} | {
            "events_in_trace": trace.early_events},
    }


def render_text(trace: Trace, rep: Replay, wide: bool = False) -> list[str]:
    """The text report: one line per story in time order, the trace's state, the summary.

    Every line fits LINE_WIDTH columns unless wide.
    """
    t0 = trace.header.get("start_mono_ns", 0)
    if type(t0) is not int:
        t0 = 0
    stories = [(r.start_ns, request_line(r, v, t0, wide)) for r, v in rep.requests]
    stories += [(ld.start_ns, load_line(ld, v, t0, wide)) for ld, v in rep.loads]
    out = [header(wide), *(line for _, line in sorted(stories)), ""]
    trailer = trace.trailer or {}
    lost, missed, misses = trailer.get("lost"), trailer.get("missed"), trailer.get("misses")
    out.append(f"kernel {trace.header.get('kernel')} profile {trace.features.profile.name}: "
               f"{len(trace.events)} events, lost {lost}, missed {missed}")
    if isinstance(misses, dict) and misses:  # which hooks the kernel skipped, by name
        out.append("missed by hook: " + ", ".join(f"{h} {n}" for h, n in sorted(misses.items())))
    note = profile_note(trace.features.profile)
    out += [note] if wide else textwrap.wrap(note, LINE_WIDTH)
    line = early.summary(trace.early, trace.early_events)
    out += [line] if wide else textwrap.wrap(line, LINE_WIDTH)
    if trace.trailer is None:
        out.append("trace has no trailer: the recorder was killed; all written events used")
    if trace.first_bad_line is not None:
        out.append(f"{trace.bad_lines} unreadable line(s), first at line "
                   f"{trace.first_bad_line}")
    out += module_summary(bymodule.join(rep.requests, rep.loads), rep.judge.model.modules(),
                          wide)
    return out


def module_summary(rows: dict[str, bymodule.ModuleRow], stats: dict[str, ModuleStats],
                   wide: bool) -> list[str]:
    """The exit summary: one row per module, requests joined to the modules they led to;
    with wide, also the model's table per request string (dups.c's own keys)."""
    out = ["", "per module:"]
    out += table_lines(bymodule.COLUMNS, bymodule.table_rows(rows, 60 if wide else 18),
                       None if wide else LINE_WIDTH)
    if wide:
        out += ["", "per request string and module name (the model's keys, as dups.c's):"]
        out += table_lines(SUMMARY_COLUMNS, summary_rows(stats), None)
    return out


# --- `boot show`: the boot debugger's questions at a glance ----------------------------------


def loading_json(trace: Trace, rep: Replay,
                 rows: dict[str, bymodule.ModuleRow]) -> dict[str, Any]:
    """How much of the traced time went to module loading, and what the repeats cost
    (ROWS: bymodule.join of the same replay)."""
    start, end = trace.header.get("start_mono_ns"), (trace.trailer or {}).get("end_mono_ns")
    return {
        "traced_from_ns": early.traced_from_ns(trace.early, start if type(start) is int else None),
        "tracer_attached_ns": start if type(start) is int else None,
        "traced_to_ns": end if type(end) is int else None,
        "busy_ns": bymodule.busy_ns(ld for ld, _ in rep.loads),
        "attempts": sum(r.attempts for r in rows.values()),
        "repeated_modules": sorted(k for k, r in rows.items() if r.repeated),
        "wasted_bytes": sum(r.wasted_bytes for r in rows.values()),
    }


def render_boot(trace: Trace, rep: Replay, wide: bool = False) -> list[str]:
    """Which modules were tried more than once and by which devices, the vmalloc they
    wasted, their first-to-last span and the boot's share spent loading modules."""
    rows = bymodule.join(rep.requests, rep.loads)
    load = loading_json(trace, rep, rows)
    start, end = load["traced_from_ns"], load["traced_to_ns"]
    traced = end - start if start is not None and end is not None else 0
    h = trace.header
    out = [f"boot {str(h.get('boot_id', '?'))[:8]}  kernel {h.get('kernel')}  "
           f"{h.get('cpus')} CPUs  profile {trace.features.profile.name}"]
    if start is not None:
        out.append(f"traced from {start / 1e9:.2f} s after boot"
                   + (f" to {end / 1e9:.2f} s" if end is not None else " (no trailer)"))
    line = early.summary(trace.early, trace.early_events)
    out += [line] if wide else textwrap.wrap(line, LINE_WIDTH)
    for line in bymodule.headline(rows, load["busy_ns"], traced):
        out += [line] if wide else textwrap.wrap(line, LINE_WIDTH)
    out.append("")
    width = None if wide else LINE_WIDTH
    out += table_lines(bymodule.COLUMNS, bymodule.table_rows(rows, 60 if wide else 18), width)
    note = profile_note(trace.features.profile)
    out += [note] if wide else textwrap.wrap(note, LINE_WIDTH)
    return out
