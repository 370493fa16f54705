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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tracer.model import LoadVerdict, RequestVerdict
from tracer.stories import Load, Request, kmod_name

_NOT_ATTEMPTS = frozenset({"unknown"})


@dataclass(slots=True)
class ModuleRow:
    module: str  # "" for loads the kernel could not name (Report.unnamed)
    requests: int = 0  # reached module:module_request (dups.c saw them), as the model counts
    duplicates: int = 0  # requests a dups.c kernel would have converged
    rejected: int = 0  # requests stopped before module:module_request: not in requests
    aliases: Counter[str] = field(default_factory=Counter)  # request strings, MODALIASes
    devices: Counter[str] = field(default_factory=Counter)  # devpath -> load attempts
    subsystems: Counter[str] = field(default_factory=Counter)  # subsystem -> attempts
    device_subsystem: dict[str, str] = field(default_factory=dict)  # devpath -> subsystem
    attempts: int = 0  # (f)init_module calls for this module
    ok: int = 0  # converged waiters of a winner that loaded included
    # idempotent() waiters, counted in ok or failures as the winner returned
    converged: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # errno name -> count
    converged_failures: Counter[str] = field(default_factory=Counter)  # of failures, waiters'
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
            "module": self.module or None, "requests": self.requests,
            "duplicates": self.duplicates, "rejected": self.rejected,
            "aliases": dict(self.aliases), "devices": dict(self.devices),
            "subsystems": dict(self.subsystems), "attempts": self.attempts, "ok": self.ok,
            "converged": self.converged, "failures": dict(self.failures),
            "converged_failures": dict(self.converged_failures),
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
    else:
        row.failures[outcome] += 1
    if verdict is not None and verdict.converged:  # the winner's ret: marked, not recounted
        row.converged += 1
        if outcome != "loaded":
            row.converged_failures[outcome] += 1
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


class ByModule:
    """Builds the rows as stories finish (live, or from a replay), in bounded state: one
    row per module, and per request string its counts and the modules it led to."""

    def __init__(self) -> None:
        self._rows: dict[str, ModuleRow] = {}
        self._unnamed: ModuleRow | None = None  # loads the kernel could not name
        self._learned: dict[str, set[str]] = {}  # request string -> modules it loaded
        self._requests: Counter[str] = Counter()  # request string -> requests
        self._duplicates: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def add_load(self, load: Load, verdict: LoadVerdict | None) -> None:
        if not load.module:  # init_module() whose image could not be read (EFAULT)
            if self._unnamed is None:
                self._unnamed = ModuleRow("")
            _add_load(self._unnamed, load, verdict)
            return
        _add_load(_row(self._rows, load.module), load, verdict)
        if load.alias and load.request_id is not None:  # modprobe's: the request string
            self._learned.setdefault(load.alias, set()).add(load.module)

    def add_request(self, req: Request, verdict: RequestVerdict | None) -> None:
        if (verdict.verdict == "rejected") if verdict is not None else req.rejected:
            self._rejected[req.display_name] += 1
            return
        self._requests[req.display_name] += 1
        if verdict is not None and verdict.verdict == "duplicate":
            self._duplicates[req.display_name] += 1

    def modules_of(self, name: str) -> set[str]:
        """The modules requests for NAME led to: what their modprobes loaded, else the
        module of that very name (request_module("xfs"))."""
        mods = self._learned.get(name)
        if mods:
            return mods
        return {kmod_name(name)} if kmod_name(name) in self._rows else set()

    def rows(self) -> dict[str, ModuleRow]:
        """Rows keyed by module, requests attributed to every module their string led to;
        a request string that led to no module keeps a row of its own."""
        rows = {k: replace(r, aliases=Counter(r.aliases)) for k, r in self._rows.items()}
        for name in self._requests.keys() | self._rejected.keys():
            n, rejected = self._requests[name], self._rejected[name]
            for mod in self.modules_of(name) or {name}:
                row = _row(rows, mod)
                row.requests += n
                row.rejected += rejected
                row.duplicates += self._duplicates[name]
                row.aliases[name] += n + rejected
        return rows

    def unnamed(self) -> ModuleRow | None:
        """The row of the loads the kernel could not name, if any: kept out of rows()
        (no module is named ""), counted in Loading."""
        return None if self._unnamed is None else replace(self._unnamed)


def accumulate(requests: Iterable[tuple[Request, RequestVerdict | None]],
               loads: Iterable[tuple[Load, LoadVerdict | None]]) -> ByModule:
    """The rows of a finished replay, named and unnamed."""
    acc = ByModule()
    for load, lv in loads:
        acc.add_load(load, lv)
    for req, rv in requests:
        acc.add_request(req, rv)
    return acc


def join(requests: Iterable[tuple[Request, RequestVerdict | None]],
         loads: Iterable[tuple[Load, LoadVerdict | None]]) -> dict[str, ModuleRow]:
    """Rows keyed by kmod module name for a finished replay."""
    return accumulate(requests, loads).rows()


def request_modules(requests: Iterable[tuple[Request, RequestVerdict | None]],
                    loads: Iterable[tuple[Load, LoadVerdict | None]]) -> dict[int, str]:
    """Request id -> the module it led to (the first by name, when it led to several)."""
    acc = ByModule()
    for load, lv in loads:
        acc.add_load(load, lv)
    out = {}
    for req, _ in requests:
        mods = acc.modules_of(req.display_name)
        if mods:
            out[req.id] = min(mods)
    return out


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


# What a boot debugger asks first comes first: the devices before the request counts.
COLUMNS = ("MODULE", "TRIES", "OK", "FAILED", "WASTED", "DEVICES", "SPAN(s)", "LOAD(s)",
           "REQS", "DUPS", "REJ", "ALIASES")
# How the text views name the loads the kernel could not name (JSON: unnamed_loads).
UNNAMED = "(unnamed)"


def table_rows(rows: Mapping[str, ModuleRow], alias_width: int = 18,
               unnamed: ModuleRow | None = None) -> list[tuple[str, ...]]:
    """Modules tried more than once first, most wasted first: the boot debugger's order.
    UNNAMED: the row of the loads the kernel could not name, shown as "(unnamed)"."""
    from tracer.report import errno_counts, human_bytes  # the one formatter of each

    ordered = sorted([*rows.values(), *([unnamed] if unnamed is not None else [])],
                     key=lambda r: (not r.repeated, -r.wasted_bytes, -r.attempts, r.module))
    out: list[tuple[str, ...]] = []
    for r in ordered:
        ok_conv = r.converged - sum(r.converged_failures.values())
        ok = f"{r.ok} ({ok_conv} converged)" if ok_conv else str(r.ok)
        out.append(((r.module or UNNAMED)[:20], str(r.attempts), ok,
                    errno_counts(r.failures, r.converged_failures),
                    human_bytes(r.wasted_bytes), _devices(r), f"{r.span_ns / 1e9:.3f}",
                    f"{r.load_ns / 1e9:.3f}", str(r.requests), str(r.duplicates),
                    str(r.rejected), _aliases(r, alias_width)))
    return out
