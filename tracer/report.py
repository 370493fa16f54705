"""How stories, verdicts and summaries look: bcc-style lines, JSON, tables."""

from __future__ import annotations

import errno
from typing import IO, Any

from tracer.model import (
    LoadVerdict,
    ModuleStats,
    RequestVerdict,
    json_fields,
    kernel_disagrees,
    summary_fields,
)
from tracer.stories import Load, Request, decode_wait_status

HEADER = f"{'TIME(s)':<10} {'PID':<7} {'COMM':<16} {'WHAT':<6} {'NAME':<22} {'RET':<10} " \
         f"{'LAT(ms)':>8}  DETAIL"


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


def request_line(req: Request, v: RequestVerdict | None, t0_ns: int) -> str:
    what = "REQ" if req.wait else "REQNW"
    detail = []
    if req.rejected:
        detail.append("rejected before module_request")
    if req.queue_ns is not None and req.queue_ns > 1_000_000:
        detail.append(f"queued={_ms(req.queue_ns)}ms")
    if req.modprobe_pid is not None:
        status = "" if req.modprobe_exit is None else f" {decode_wait_status(req.modprobe_exit)}"
        detail.append(f"modprobe={req.modprobe_pid}{status}")
    if req.load_ids:
        detail.append(f"loads={len(req.load_ids)}")
    if v is not None and v.verdict == "duplicate":
        detail.append(f"duplicate request for module {req.name} (dups: ret {v.predicted_ret},"
                      f" wait {_ms(v.would_wait_ns)}ms)")
    elif v is not None:
        detail.append(v.verdict)
    if kernel_disagrees(req, v):  # the kernel's own dups.c verdict was traced and differs
        detail.append(f"!k kernel: {req.kernel_verdict} ret {req.kernel_ret}")
    return (f"{(req.start_ns - t0_ns) / 1e9:<10.6f} {req.pid:<7} {req.comm[:16]:<16} {what:<6} "
            f"{req.display_name[:22]:<22} {request_ret(req):<10} {_ms(req.duration_ns):>8}  "
            + " ".join(detail))


def load_line(load: Load, v: LoadVerdict | None, t0_ns: int) -> str:
    what = "FINIT" if load.syscall == "finit_module" else "INIT"
    detail = []
    if load.file:
        detail.append(f"file={load.file} ino={load.ino}")
    detail.append(f"size={load.size}")
    if load.init_ns is not None:
        detail.append(f"init={_ms(load.init_ns)}ms")
    if load.request_id is not None:
        detail.append(f"for-request=#{load.request_id}")
    if v is not None:
        detail.append(v.outcome + (f" ({v.rule})" if v.rule else ""))
        if v.wasted_bytes:
            detail.append(f"wasted={v.wasted_bytes}B")
    return (f"{(load.start_ns - t0_ns) / 1e9:<10.6f} {load.pid:<7} {load.comm[:16]:<16} "
            f"{what:<6} {load.module[:22]:<22} {errno_name(load.ret):<10} "
            f"{_ms(load.duration_ns):>8}  " + " ".join(detail))


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
        "modprobe_name": req.umh_name, "load_ids": req.load_ids,
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
    }


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


def print_table(out: IO[str], columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() + "\n")


def module_json(m: ModuleStats) -> dict[str, Any]:
    """modules{name} of `report --json`: the ModuleStats fields marked json."""
    out: dict[str, Any] = {}
    for f in json_fields():
        v = getattr(m, f.name)
        out[f.name] = dict(v) if isinstance(v, dict) else v
    return out
