"""Per-name counters: defined once here, iterated by the model, the summary table and JSON.

Each ModuleStats field says, in its metadata, how it is shown: its JSON key (the field name)
if ``json``, its summary column header if ``column``, its ``unit`` (count, ns, ms, bytes,
errnos, name), ``of`` (shown as "this/that"), and ``derive`` (computed from the raw counters
when a snapshot is taken). tracer/report.py renders the units; nothing here formats text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, Literal

Unit = Literal["name", "count", "ns", "ms", "bytes", "errnos"]


def _stat(
    unit: Unit = "count",
    *,
    json: bool = False,
    column: str | None = None,
    of: str | None = None,
    derive: Callable[[ModuleStats], Any] | None = None,
) -> Any:
    meta = {"unit": unit, "json": json, "column": column, "of": of, "derive": derive}
    return field(default=0.0 if unit == "ms" else 0, metadata=meta)


@dataclass(slots=True)
class ModuleStats:
    """Aggregated counters for one request string or module name.

    The model updates one instance per name in place; modules() hands out snapshots.
    """

    name: str = field(metadata={"unit": "name", "json": False, "column": "MODULE",
                                "of": None, "derive": None})
    requests: int = _stat(json=True, column="REQS")  # reached module:module_request
    firsts: int = _stat()
    duplicates: int = _stat(json=True, column="DUPS")
    untracked: int = _stat(json=True)
    # stopped before the tracepoint (LSM, throttle, no modprobe path): not in requests
    rejected: int = _stat(json=True, column="REJ")
    # modprobe helpers seen on the actual kernel, against what dups would have run
    modprobe_spawns: int = _stat(json=True, column="MODPROBE", of="modprobe_needed")
    modprobe_needed: int = _stat(json=True, derive=lambda m: m.firsts + m.untracked)
    extra_modprobe: int = _stat(json=True, derive=lambda m: m.modprobe_spawns - m.modprobe_needed)
    # requests that under simulated dups would have found all kmod throttle slots held
    would_queue: int = _stat(json=True)
    loads: int = _stat(column="LOADS")  # load attempts finished
    loads_ok: int = _stat(json=True, column="OK")
    # errno name -> count, converged waiters included: idempotent() hands each the winner's
    # ret, so a failing winner's waiters failed too
    load_failures: dict[str, int] = field(default_factory=dict, metadata={
        "unit": "errnos", "json": True, "column": "FAILED", "of": None, "derive": None})
    # idempotent() waiters, counted in loads_ok or load_failures as they returned
    converged: int = _stat(json=True, column="CONVERGED")
    # of load_failures, the converged waiters': errno name -> count
    converged_failures: dict[str, int] = field(default_factory=dict, metadata={
        "unit": "errnos", "json": True, "column": None, "of": None, "derive": None})
    would_converge: int = _stat()  # attempts idempotent() would have turned into waiters
    reads: int = _stat()  # attempts that read the file
    # Attempts that read the file, beyond the ones needed: reads - max(loads that read
    # and succeeded, 1); a converged waiter read nothing.
    extra_reads: int = _stat(json=True, column="XREADS", derive=lambda m: max(
        0, m.reads - max(m.loads_ok - m.converged + sum(m.converged_failures.values()), 1)))
    wasted_bytes: int = _stat("bytes", json=True, column="WASTED")  # MODULE_STATS rules
    bytes_saved: int = _stat("bytes")  # of wasted_bytes, what idempotent() would have saved
    # Largest race: a maximal group of requests/loads of this name whose [arrival, return]
    # intervals overlap (touching counts); its window is first arrival to last arrival.
    race_window_ns: int = _stat("ns", json=True, column="RACE(ms)")
    dup_wait_ns: int = _stat("ns", json=True, column="DUPWAIT(ms)")  # resolved duplicates
    # Time spent on avoidable work: modprobe run time of duplicates that ran one, plus the
    # duration of load attempts that read the file and failed EEXIST/EBUSY.
    extra_ns: int = _stat("ns")
    extra_ms: float = _stat("ms", json=True, column="COST(ms)", derive=lambda m: m.extra_ns / 1e6)

    def snapshot(self) -> ModuleStats:
        """A copy with the derived counters filled in, in field order."""
        out = replace(self, load_failures=dict(self.load_failures),
                      converged_failures=dict(self.converged_failures))
        for f in fields(self):
            derive = f.metadata["derive"]
            if derive is not None:
                setattr(out, f.name, derive(out))
        return out


def summary_fields() -> tuple[Field[Any], ...]:
    """The summary table's columns, in order."""
    return tuple(f for f in fields(ModuleStats) if f.metadata["column"])


def json_fields() -> tuple[Field[Any], ...]:
    """What `report --json` writes under modules{name}."""
    return tuple(f for f in fields(ModuleStats) if f.metadata["json"])


class RaceWindow:
    """The largest group of overlapping [arrival, return] intervals of one name."""

    __slots__ = ("active", "end", "last", "start", "window_ns")

    def __init__(self) -> None:
        self.active = 0
        self.start = 0
        self.last = 0
        self.end = -1  # latest return seen in the current race
        self.window_ns = 0

    def arrive(self, t: int) -> None:
        if self.active == 0 and t > self.end:
            self.start = self.last = t  # nothing overlaps: a new race
        elif t > self.last:
            self.last = t
            self.window_ns = max(self.window_ns, t - self.start)
        self.active += 1

    def leave(self, end: int) -> None:
        self.active -= 1
        self.end = max(self.end, end)

    def late(self, start: int, end: int) -> None:
        """Join an interval known only at its end (a load whose name came with its exit)."""
        if (self.active > 0 or start <= self.end) and end >= self.start:
            self.start = min(self.start, start)
            self.last = max(self.last, start)
            self.window_ns = max(self.window_ns, self.last - self.start)
        else:
            self.start = self.last = start
        self.end = max(self.end, end)


class Tally:
    """One name's counters and its race window."""

    __slots__ = ("c", "race")

    def __init__(self, name: str) -> None:
        self.c = ModuleStats(name)
        self.race = RaceWindow()

    def snapshot(self) -> ModuleStats:
        self.c.race_window_ns = self.race.window_ns
        return self.c.snapshot()


class Tallies(dict[str, Tally]):
    """Tally per name, made on first use."""

    def __missing__(self, name: str) -> Tally:
        t = self[name] = Tally(name)
        return t
