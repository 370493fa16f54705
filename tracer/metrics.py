"""A boot's figures for the monitoring a fleet already runs: the Prometheus text exposition
format (version 0.0.4) that node_exporter's textfile collector reads (it does not parse
OpenMetrics), one file per host, replaced at each boot.

Every figure comes from the Report (tracer/reportdata.py), as every other view's does.
Names follow Prometheus's conventions: the `kmodtrace_` prefix, base units (`_bytes`,
`_seconds`), `_total` on counters (counts within the traced boot; a new boot resets them,
which rate() and increase() take as a counter reset). Every sample carries `kernel` (the
release) and `cpus`, so that a fleet can aggregate by either.

Label values are escaped as the format says (`\\` `"` and the line feed); module names
and errnos come from untrusted processes and are kept exactly, but a name that is not
UTF-8 (a byte surrogateescape kept, tracer/text.py) cannot be written in a UTF-8 file: it
is written as text.shown() shows it.

The file is written atomically: a hidden temporary file in the same directory (the
textfile collector reads only `*.prom`), then rename(2) over the target, never through a
link (the target is checked as `record -o` checks its output), with mode 0644 so that
node_exporter, which does not run as root, can read it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tracer.record import TraceOutputError, check_output
from tracer.reportdata import Report
from tracer.text import shown

PREFIX = "kmodtrace_"
MODE = 0o644

Labels = Mapping[str, str]


def escape_label(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that are not UTF-8
        value = shown(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


@dataclass(slots=True)
class Family:
    """One metric family: its HELP and TYPE lines and its samples."""

    name: str
    kind: str  # counter | gauge
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((dict(labels), value))

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            out.append(f"{self.name}{{{text}}} {_number(value)}")
        return out


def families(r: Report) -> list[Family]:
    """The boot's and every module's figures."""
    base = {"kernel": r.kernel or "", "cpus": str(r.cpus) if r.cpus is not None else ""}
    lo, loss = r.loading, r.loss

    def fam(name: str, kind: str, help_: str) -> Family:
        return Family(PREFIX + name, kind, help_)

    info = fam("boot_info", "gauge", "The traced boot: its id and the model's kernel profile "
               "(always 1).")
    info.add(base | {"boot_id": r.boot_id or "", "profile": r.profile.name}, 1)
    attempts = fam("boot_load_attempts_total", "counter",
                   "(f)init_module calls in the traced boot.")
    attempts.add(base, lo.attempts)
    repeated = fam("boot_repeated_modules", "gauge", "Modules tried more than once.")
    repeated.add(base, len(lo.repeated_modules))
    wasted = fam("boot_wasted_bytes", "gauge",
                 "vmalloc bytes the failed load attempts wasted (MODULE_STATS rules).")
    wasted.add(base, lo.wasted_bytes)
    busy = fam("boot_loading_busy_seconds", "gauge",
               "Time with at least one module load in flight.")
    if lo.busy_ns is not None:
        busy.add(base, lo.busy_ns / 1e9)
    traced = fam("boot_traced_seconds", "gauge", "Time the trace covers.")
    if lo.traced_ns is not None:
        traced.add(base, lo.traced_ns / 1e9)
    lost = fam("boot_lost_events_total", "counter",
               "Ring-buffer records dropped (absent: the trace cannot say).")
    if loss.lost is not None:
        lost.add(base, loss.lost)
    missed = fam("boot_missed_probes_total", "counter",
                 "Probe runs the kernel skipped (absent: the trace cannot say).")
    if loss.missed is not None:
        missed.add(base, loss.missed)
    exact = fam("boot_counts_complete", "gauge",
                "1: nothing was dropped and the trace says so; 0: every count is a lower "
                "bound.")
    exact.add(base, 0 if loss.dropped or loss.unknown else 1)

    m_attempts = fam("module_load_attempts_total", "counter",
                     "(f)init_module calls for the module.")
    m_failures = fam("module_load_failures_total", "counter",
                     "Failed load attempts of the module, by errno (idempotent() waiters "
                     "counted as they returned).")
    m_wasted = fam("module_wasted_bytes", "gauge",
                   "vmalloc bytes the module's failed attempts wasted (MODULE_STATS rules).")
    m_span = fam("module_span_seconds", "gauge",
                 "First to last load attempt of the module: how long its race lasted.")
    m_load = fam("module_load_seconds_total", "counter",
                 "Time in the module's (f)init_module calls, summed over calls.")
    m_requests = fam("module_requests_total", "counter",
                     "Kernel requests (request_module) that led to the module.")
    for name in sorted(r.by_module):
        row = r.by_module[name]
        labels = base | {"module": name}
        m_attempts.add(labels, row.attempts)
        for err, n in sorted(row.failures.items()):
            m_failures.add(labels | {"errno": err}, n)
        m_wasted.add(labels, row.wasted_bytes)
        m_span.add(labels, row.span_ns / 1e9)
        m_load.add(labels, row.load_ns / 1e9)
        m_requests.add(labels, row.requests)
    return [info, attempts, repeated, wasted, busy, traced, lost, missed, exact,
            m_attempts, m_failures, m_wasted, m_span, m_load, m_requests]


def exposition(fams: Iterable[Family]) -> str:
    """The text format; a family without samples is left out."""
    lines: list[str] = []
    for f in fams:
        if f.samples:
            lines += f.lines()
    return "\n".join(lines) + "\n"


def write(path: str, r: Report, keep: str | None = None) -> None:
    """Write R's metrics to PATH atomically, never through a link nor over KEEP (the trace
    read); TraceOutputError names why not."""
    what = "metrics file"
    check_output(path, what, keep)
    text = exposition(families(r)).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as e:
        raise TraceOutputError(f"cannot write the {what} to {path}: {e.strerror}") from e
    try:
        try:
            os.fchmod(fd, MODE)
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        check_output(path, what, keep)  # planted since the first check: still refused
        os.rename(tmp, path)  # replaces the name; a link there is replaced, not followed
    except OSError as e:
        os.unlink(tmp)
        raise TraceOutputError(f"cannot write the {what} to {path}: {e.strerror}") from e
    except BaseException:
        os.unlink(tmp)
        raise
