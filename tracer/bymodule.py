"""One row per module: the requests, aliases and devices that led to it, its load
attempts and what they cost.

The model keys requests by their exact string, as dups.c does (`fs-minix`,
`net-pf-5`), and loads by module name: a user asks about modules. Here each request
is joined to the modules its modprobe loaded; a request whose modprobe loaded
nothing (the module was already there) is joined through another request of the
same string that did load something. udev's loads carry their device (tracer/udev.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer.model import LoadVerdict, RequestVerdict
from tracer.stories import Load, Request, kmod_name

_NOT_ATTEMPTS = frozenset({"unknown"})


@dataclass(slots=True)
class ModuleRow:
    module: str
    requests: int = 0
    duplicates: int = 0  # requests a dups.c kernel would have converged
    aliases: Counter[str] = field(default_factory=Counter)  # request strings, MODALIASes
    devices: Counter[str] = field(default_factory=Counter)  # devpath -> load attempts
    subsystems: Counter[str] = field(default_factory=Counter)  # subsystem -> attempts
    device_subsystem: dict[str, str] = field(default_factory=dict)  # devpath -> subsystem
    attempts: int = 0  # (f)init_module calls for this module
    ok: int = 0
    converged: int = 0  # idempotent() waiters
    failures: Counter[str] = field(default_factory=Counter)  # errno name -> count
    wasted_bytes: int = 0  # MODULE_STATS bytes the failed attempts cost
    first_ns: int | None = None  # first attempt's start
    last_ns: int | None = None  # last attempt's start
    load_ns: int = 0  # time spent in this module's (f)init_module calls

    @property
    def span_ns(self) -> int:
        """First to last attempt: how long the race for this module lasted."""
        return 0 if self.first_ns is None or self.last_ns is None else self.last_ns - self.first_ns

    @property
    def repeated(self) -> bool:
        """Loaded, or tried, more than once."""
        return self.attempts > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module, "requests": self.requests, "duplicates": self.duplicates,
            "aliases": dict(self.aliases), "devices": dict(self.devices),
            "subsystems": dict(self.subsystems), "attempts": self.attempts, "ok": self.ok,
            "converged": self.converged, "failures": dict(self.failures),
            "wasted_bytes": self.wasted_bytes, "first_ns": self.first_ns,
            "last_ns": self.last_ns, "span_ns": self.span_ns, "load_ns": self.load_ns,
        }


def _row(rows: dict[str, ModuleRow], module: str) -> ModuleRow:
    row = rows.get(module)
    if row is None:
        row = rows[module] = ModuleRow(module)
    return row


def _add_load(row: ModuleRow, load: Load, verdict: LoadVerdict | None) -> None:
    outcome = verdict.outcome if verdict is not None else "unknown"
    if outcome in _NOT_ATTEMPTS and load.ret is None:
        return
    row.attempts += 1
    if outcome == "loaded":
        row.ok += 1
    elif outcome == "converged":
        row.converged += 1
    else:
        row.failures[outcome] += 1
    if verdict is not None:
        row.wasted_bytes += verdict.wasted_bytes
    row.first_ns = load.start_ns if row.first_ns is None else min(row.first_ns, load.start_ns)
    row.last_ns = load.start_ns if row.last_ns is None else max(row.last_ns, load.start_ns)
    row.load_ns += load.duration_ns or 0
    if load.device is not None:
        row.devices[load.device.devpath] += 1
        row.subsystems[load.device.subsystem] += 1
        row.device_subsystem[load.device.devpath] = load.device.subsystem
        if load.device.modalias:
            row.aliases[load.device.modalias] += 1


def join(requests: Iterable[tuple[Request, RequestVerdict | None]],
         loads: Iterable[tuple[Load, LoadVerdict | None]]) -> dict[str, ModuleRow]:
    """Rows keyed by kmod module name, largest race first when iterated by the caller."""
    rows: dict[str, ModuleRow] = {}
    by_id: dict[int, str] = {}
    for load, verdict in loads:
        if not load.module:
            continue
        by_id[load.id] = load.module
        _add_load(_row(rows, load.module), load, verdict)
    reqs = list(requests)
    for (req, rv), mods in zip(reqs, _joined(reqs, by_id, rows.keys()), strict=True):
        name = req.display_name
        for mod in mods:
            row = _row(rows, mod)
            row.requests += 1
            row.aliases[name] += 1
            if rv is not None and rv.verdict == "duplicate":
                row.duplicates += 1
    return rows


def _joined(reqs: list[tuple[Request, RequestVerdict | None]], by_id: dict[int, str],
            known: Collection[str]) -> list[set[str]]:
    """For each request, the modules it led to."""
    # request string -> the modules a request of that string loaded
    learned: dict[str, set[str]] = {}
    for req, _ in reqs:
        mods = {by_id[i] for i in req.load_ids if i in by_id}
        if mods:
            learned.setdefault(req.display_name, set()).update(mods)
    out = []
    for req, _ in reqs:
        name = req.display_name
        mods = {by_id[i] for i in req.load_ids if i in by_id} or learned.get(name, set())
        if not mods and kmod_name(name) in known:
            mods = {kmod_name(name)}  # request_module("xfs"): the string is the module
        out.append(mods)
    return out


def request_modules(requests: Iterable[tuple[Request, RequestVerdict | None]],
                    loads: Iterable[tuple[Load, LoadVerdict | None]]) -> dict[int, str]:
    """Request id -> the module it led to (the first by name, when it loaded several)."""
    by_id = {ld.id: ld.module for ld, _ in loads if ld.module}
    reqs = list(requests)
    joined = _joined(reqs, by_id, set(by_id.values()))
    return {req.id: min(mods) for (req, _), mods in zip(reqs, joined, strict=True) if mods}


def busy_ns(loads: Iterable[Load]) -> int:
    """Wall time with at least one (f)init_module call in flight."""
    spans = sorted((ld.start_ns, ld.end_ns) for ld in loads if ld.end_ns is not None)
    total, cur_start, cur_end = 0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_start is not None and cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None and cur_end is not None:
        total += cur_end - cur_start
    return total


def _devices(row: ModuleRow) -> str:
    """Distinct devices per subsystem, most first: "cpu:16 acpi:16"."""
    if not row.devices:
        return "-"
    per_sub: Counter[str] = Counter()
    for devpath in row.devices:
        per_sub[row.device_subsystem.get(devpath, "") or "?"] += 1
    return " ".join(f"{sub}:{n}" for sub, n in per_sub.most_common())


def _aliases(row: ModuleRow, width: int) -> str:
    names = [a for a, _ in row.aliases.most_common()]
    text = ",".join(names)
    return text if len(text) <= width else text[: width - 3] + "..."


COLUMNS = ("MODULE", "REQS", "TRIES", "OK", "FAILED", "WASTED", "SPAN(ms)", "LOAD(ms)",
           "DEVICES", "ALIASES")


def table_rows(rows: dict[str, ModuleRow], alias_width: int = 18) -> list[tuple[str, ...]]:
    """Modules tried more than once first, most wasted first: the boot debugger's order."""
    from tracer.report import human_bytes  # the one byte formatter

    ordered = sorted(rows.values(), key=lambda r: (not r.repeated, -r.wasted_bytes,
                                                   -r.attempts, r.module))
    out: list[tuple[str, ...]] = []
    for r in ordered:
        failed = ",".join(f"{k}:{n}" for k, n in sorted(r.failures.items())) or "0"
        if r.converged:
            failed += f",conv:{r.converged}" if r.failures else f" conv:{r.converged}"
        out.append((r.module[:20], str(r.requests), str(r.attempts), str(r.ok), failed,
                    human_bytes(r.wasted_bytes), f"{r.span_ns / 1e6:.1f}",
                    f"{r.load_ns / 1e6:.1f}", _devices(r), _aliases(r, alias_width)))
    return out


def headline(rows: dict[str, ModuleRow], busy: int, traced_ns: int) -> list[str]:
    """The answers at a glance: what repeated, what it cost, how much of the boot it took."""
    from tracer.report import human_bytes

    tries = sum(r.attempts for r in rows.values())
    repeated = [r for r in rows.values() if r.repeated]
    extra = sum(r.attempts - 1 for r in repeated)
    wasted = sum(r.wasted_bytes for r in rows.values())
    load_ns = sum(r.load_ns for r in rows.values())
    share = f" ({100 * busy / traced_ns:.1f} % of the {traced_ns / 1e9:.2f} s traced)" \
        if traced_ns > 0 else ""
    return [
        f"{tries} load attempts for {len(rows)} modules; {len(repeated)} modules tried more "
        f"than once ({extra} extra attempts); {human_bytes(wasted)} of vmalloc wasted",
        f"module loading in flight {busy / 1e9:.2f} s{share}; {load_ns / 1e9:.2f} s in "
        f"(f)init_module calls in all",
    ]
