"""Facts about the process behind a request or load, read while it still lives."""

from __future__ import annotations

import psutil


def describe(pid: int) -> tuple[str, tuple[str, ...]]:
    """(cmdline, parent chain as "comm[pid]" up to init); empty once it has exited."""
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        chain = tuple(f"{p.name()}[{p.pid}]" for p in proc.parents())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "", ()
    return cmdline, chain
