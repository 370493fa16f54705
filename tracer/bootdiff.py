"""`boot diff A B`: two boots per module, side by side, and what changed.

"What changed since the last kernel update" is a question about modules: which ones
appeared or disappeared, which ones took longer to load or raced more. Each trace is
replayed through the model and reduced to tracer.bymodule's rows; the diff compares
the rows of a module in both boots and gives it one status:

- ``new`` (only in B), ``gone`` (only in A);
- ``slower`` / ``faster``: its load time (time in its (f)init_module calls) or its span
  (first to last attempt) grew / shrank by at least PCT % of A's figure *and* at least
  MS milliseconds (25 % and 50 ms by default): small timing noise between boots is not a
  change;
- ``more`` / ``fewer``: more / fewer load attempts, duplicates, failures or wasted bytes;
- ``same``: none of these.

A module can change in several ways (slower with fewer attempts): ``changes`` lists them
all, and the status is the first in STATUSES order, regressions before improvements.

Duplicates here are both kinds the tracer sees: requests the model judged duplicate
(a dups.c kernel would have converged them; ModuleRow.duplicates) plus load attempts
that lost to a same-name load (converged idempotent() waiters and EEXIST/EBUSY
failures; `dup_attempts`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer import report, reportdata
from tracer.boot import find_boot_trace
from tracer.bymodule import ModuleRow
from tracer.reportdata import Report

# Regressions first, then improvements: the order of the table and of the status choice.
STATUSES = ("new", "gone", "slower", "more", "faster", "fewer", "same")
MARKS = {"new": "+", "gone": "-", "slower": ">", "more": "^", "faster": "<", "fewer": "v",
         "same": ""}
# The errnos of an attempt that found the module already loading or loaded.
_DUP_ERRNOS = ("EEXIST", "EBUSY")
_FAILED_CELL = 22  # narrow FAILED cells longer than this end in "+"


@dataclass(frozen=True, slots=True)
class Threshold:
    """How much a time must grow (or shrink) to count: both PCT % of A's and MS ms."""

    pct: float = 25.0
    ms: float = 50.0

    def grew(self, a: int, b: int) -> bool:
        """b is past a by both margins (a == 0: any growth of at least MS)."""
        d = b - a
        return d > 0 and d >= self.ms * 1e6 and d * 100 >= self.pct * a


def dup_attempts(row: ModuleRow) -> int:
    """Load attempts that lost to a same-name load: converged waiters, EEXIST, EBUSY
    (a waiter handed a winner's EEXIST counted once)."""
    return row.converged + sum(row.failures.get(e, 0) - row.converged_failures.get(e, 0)
                               for e in _DUP_ERRNOS)


def duplicates(row: ModuleRow) -> int:
    """Requests judged duplicate plus attempts that lost to a same-name load."""
    return row.duplicates + dup_attempts(row)


def _costs(row: ModuleRow) -> tuple[int, int, int, int]:
    return row.attempts, duplicates(row), sum(row.failures.values()), row.wasted_bytes


def changes(a: ModuleRow | None, b: ModuleRow | None,
            threshold: Threshold = Threshold()) -> tuple[str, ...]:
    """Every way the module changed from A to B, in STATUSES order; ("same",) if none."""
    if a is None or b is None:
        return ("new",) if a is None else ("gone",)
    found = set()
    if threshold.grew(a.load_ns, b.load_ns) or threshold.grew(a.span_ns, b.span_ns):
        found.add("slower")
    if threshold.grew(b.load_ns, a.load_ns) or threshold.grew(b.span_ns, a.span_ns):
        found.add("faster")
    pairs = list(zip(_costs(a), _costs(b), strict=True))
    if any(y > x for x, y in pairs):
        found.add("more")
    if any(y < x for x, y in pairs):
        found.add("fewer")
    return tuple(s for s in STATUSES if s in found) or ("same",)


@dataclass(frozen=True, slots=True)
class ModuleDiff:
    module: str
    changes: tuple[str, ...]
    a: ModuleRow | None
    b: ModuleRow | None

    @property
    def status(self) -> str:
        return self.changes[0]

    @property
    def wasted_delta(self) -> int:
        return ((0 if self.b is None else self.b.wasted_bytes)
                - (0 if self.a is None else self.a.wasted_bytes))

    @property
    def load_delta(self) -> int:
        return (0 if self.b is None else self.b.load_ns) - (0 if self.a is None else self.a.load_ns)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "changes": list(self.changes),
                "a": _row_json(self.a), "b": _row_json(self.b)}


def _row_json(row: ModuleRow | None) -> dict[str, Any] | None:
    return None if row is None else row.to_json() | {"dup_attempts": dup_attempts(row)}


@dataclass(frozen=True, slots=True)
class Boot:
    """One side of the diff: a trace file and its Report."""

    path: str
    report: Report

    @property
    def rows(self) -> Mapping[str, ModuleRow]:
        return self.report.by_module

    def headline(self) -> dict[str, Any]:
        r = self.report
        return {
            "path": self.path, "boot_id": r.boot_id, "kernel": r.kernel, "cpus": r.cpus,
            "profile": r.profile.name, "modules": r.loading.modules,
            **report.loading_json(r.loading), "traced_ns": r.loading.traced_ns,
        }


def resolve(which: str, log_dir: str | os.PathLike[str]) -> Path:
    """A trace file as is, or a boot (id prefix, 0, -1, ...) of log_dir; ValueError if
    neither."""
    if os.path.exists(which):
        return Path(which)
    if os.sep in which or which.endswith(".jsonl"):  # meant as a file: say so, not "boot"
        raise ValueError(f"{which}: no such trace file (give a trace file or a boot: an id "
                         "prefix, 0, -1, ...)")
    return find_boot_trace(log_dir, which)


def load_boot(path: str | os.PathLike[str]) -> Boot:
    """Replay the trace in PATH; TraceFormatError (a ValueError) if it is not one."""
    return Boot(str(path), reportdata.read(str(path)))


def _order(d: ModuleDiff) -> tuple[int, int, int, str]:
    """Status first, then the biggest wasted change, then the biggest load-time change."""
    return (STATUSES.index(d.status), -abs(d.wasted_delta), -abs(d.load_delta), d.module)


@dataclass(slots=True)
class BootDiff:
    a: Boot
    b: Boot
    threshold: Threshold
    modules: list[ModuleDiff]  # in _order: what a boot debugger looks at first

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for d in self.modules if d.status == s) for s in STATUSES}


def diff(a: Boot, b: Boot, threshold: Threshold = Threshold()) -> BootDiff:
    names = a.rows.keys() | b.rows.keys()
    mods = [ModuleDiff(n, changes(a.rows.get(n), b.rows.get(n), threshold), a.rows.get(n),
                       b.rows.get(n)) for n in names]
    return BootDiff(a, b, threshold, sorted(mods, key=_order))


def document(d: BootDiff) -> dict[str, Any]:
    """The `boot diff --json` document: $defs/boot_diff of tracer/report.schema.json, whose
    version it carries (its rows are `report --json`'s by_module rows)."""
    return {
        "schema_version": report.SCHEMA_VERSION,
        "threshold": {"pct": d.threshold.pct, "ms": d.threshold.ms},
        "a": d.a.headline(), "b": d.b.headline(), "counts": d.counts(),
        "modules": {m.module: m.to_json() for m in d.modules},
    }


# --- text ----------------------------------------------------------------------------------


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def _s(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e9:.2f} s"


def _signed(n: float, text: str) -> str:
    """TEXT (the magnitude) with N's sign."""
    return ("+" if n > 0 else "-") + text if n else "0"


def _failed(a: ModuleRow | None, b: ModuleRow | None) -> str:
    """Per errno, A's count / B's, and the converged waiters among them:
    "ENODEV:16/1 (15/0 converged),EBUSY:-/1"."""
    fa = a.failures if a is not None else {}
    fb = b.failures if b is not None else {}
    ca = a.converged_failures if a is not None else {}
    cb = b.converged_failures if b is not None else {}

    def count(row: ModuleRow | None, counts: Mapping[str, int], k: str) -> str:
        return "-" if row is None else str(counts.get(k, 0))

    cell = ",".join(
        f"{k}:{count(a, fa, k)}/{count(b, fb, k)}"
        + (f" ({count(a, ca, k)}/{count(b, cb, k)} converged)" if ca.get(k) or cb.get(k)
           else "")
        for k in sorted(set(fa) | set(fb)))
    return cell or "0"


def _pair(a: ModuleRow | None, b: ModuleRow | None, cell: Any) -> str:
    return f"{'-' if a is None else cell(a)}/{'-' if b is None else cell(b)}"


COLUMNS = ("", "MODULE", "TRIES A/B", "OK", "DUPS", "WASTED", "LOAD(ms)", "SPAN(ms)",
           "FAILED", "REQS", "CHANGES")


def table_rows(d: BootDiff, wide: bool = False) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for m in d.modules:
        a, b = m.a, m.b
        failed = _failed(a, b)
        if not wide and len(failed) > _FAILED_CELL:
            failed = failed[: _FAILED_CELL - 1] + "+"
        out.append((
            MARKS[m.status], m.module if wide else m.module[:20],
            _pair(a, b, lambda r: r.attempts), _pair(a, b, lambda r: r.ok),
            _pair(a, b, duplicates),
            _pair(a, b, lambda r: report.human_bytes(r.wasted_bytes)),
            _pair(a, b, lambda r: _ms(r.load_ns)), _pair(a, b, lambda r: _ms(r.span_ns)),
            failed, _pair(a, b, lambda r: r.requests), ",".join(m.changes),
        ))
    return out


def _fit_path(label: str, path: str, width: int | None) -> str:
    line = f"{label} = {path}"
    if width is None or len(line) <= width:
        return line
    return f"{label} = ...{path[len(line) - width + 3:]}"


def _headline_rows(d: BootDiff) -> list[tuple[str, ...]]:
    a, b = d.a.headline(), d.b.headline()
    hb = report.human_bytes

    def num(label: str, x: int | None, y: int | None, fmt: Any) -> tuple[str, ...]:
        if x is None or y is None:
            return (label, "-" if x is None else fmt(x), "-" if y is None else fmt(y), "")
        delta = y - x
        return (label, fmt(x), fmt(y), _signed(delta, fmt(abs(delta))))

    return [
        ("boot", str(a["boot_id"] or "?")[:8], str(b["boot_id"] or "?")[:8], ""),
        ("kernel", str(a["kernel"] or "?"), str(b["kernel"] or "?"), ""),
        ("profile", a["profile"], b["profile"], ""),
        num("CPUs", a["cpus"], b["cpus"], str),
        num("modules", a["modules"], b["modules"], str),
        num("load attempts", a["attempts"], b["attempts"], str),
        num("tried > once", len(a["repeated_modules"]), len(b["repeated_modules"]), str),
        num("vmalloc wasted", a["wasted_bytes"], b["wasted_bytes"], hb),
        num("loading busy", a["busy_ns"], b["busy_ns"], _s),
        num("traced", a["traced_ns"], b["traced_ns"], _s),
    ]


def render(d: BootDiff, wide: bool = False) -> list[str]:
    """The headline side by side, then one row per module, changes first; within
    report.LINE_WIDTH columns unless wide."""
    width = None if wide else report.LINE_WIDTH
    out = [_fit_path("A", d.a.path, width), _fit_path("B", d.b.path, width), ""]
    out += report.table_lines(("", "A", "B", "CHANGE"), _headline_rows(d), width)
    n = d.counts()
    out += ["", ", ".join(f"{n[s]} {s}" for s in STATUSES), ""]
    cols = COLUMNS if wide else COLUMNS[:-2]  # REQS and CHANGES: details for --wide
    rows = [r[: len(cols)] for r in table_rows(d, wide)]
    out += report.table_lines(cols, rows, width)
    th = d.threshold
    legend = [
        f"+ new (only in B), - gone (only in A), > slower / < faster (LOAD or SPAN moved by "
        f"{th.pct:g} % and {th.ms:g} ms),",
        "^ more / v fewer tries, DUPS, failures or wasted bytes.",
        "DUPS: requests judged duplicate + attempts that lost to a same-name load (EEXIST, "
        "EBUSY, idempotent() waiters). LOAD: time in (f)init_module; SPAN: first to last "
        "attempt.",
    ]
    out.append("")
    for text in legend:  # each its own line: a mark never wraps away from its meaning
        out += [text] if wide else textwrap.wrap(text, report.LINE_WIDTH)
    return out
