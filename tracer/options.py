"""What the user asked of a tracing session (`live`, `record`): kept apart from live.py so
that the command line can start compiling the BPF program before importing the rest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from tracer.errors import TracerError
from tracer.record import check_output


@dataclass(slots=True)
class Options:
    output: str | None = None  # trace file
    duration: float | None = None
    pid: int | None = None
    module: str | None = None
    timestamps: bool = False
    json: bool = False
    failed_only: bool = False  # -x: only duplicates, failures and wasted loads
    wide: bool = False  # every detail, past report.LINE_WIDTH columns
    quiet: bool = False  # no per-story lines (record)
    command: list[str] = field(default_factory=list)
    ready_file: str | None = None
    until_settled: float | None = None  # stop once udev and boot settle this long
    announce: str | None = None  # --announce: the dups.c form to model, over detection
    early: bool = True  # drain the kernel's boot-time trace (tracer/early.py) at attach


def check_options(opts: Options) -> None:
    """TracerError or TraceOutputError for what would fail after attaching: before the
    second of attaching, a bad path fails fast."""
    if opts.output:
        check_output(opts.output)
    if opts.ready_file:
        check_output(opts.ready_file, "ready file")
    if opts.command and shutil.which(opts.command[0]) is None:
        raise TracerError(f"cannot run {opts.command[0]}: no such command (give a program on "
                          "PATH, or its path, after --)")
