"""Parsing the kernel's own tracefs output, the witness the VM tests compare against."""

from __future__ import annotations

import errno
from pathlib import Path

from kmodlab.witness import parse, parse_line

DATA = Path(__file__).parent / "data" / "vm-6.1" / "witness.txt"


def test_syscall_enter_and_exit_lines() -> None:
    enter = parse_line("        modprobe-586     [000] ...1.   155.720903: "
                       "sys_finit_module(fd: 0, uargs: 55bf4a5f4fb0, flags: 0)")
    exit_ = parse_line("        modprobe-584     [000] ...1.   156.086755: "
                       "sys_finit_module -> 0xffffffffffffffef")
    assert enter is not None and exit_ is not None
    assert (enter.event, enter.tid, enter.ts_ns) == ("sys_enter_finit_module", 586, 155720903000)
    assert (exit_.event, exit_.ret) == ("sys_exit_finit_module", -errno.EEXIST)


def test_module_lines() -> None:
    req = parse_line("     kmodstorm/4-535     [001] .....   153.944118: module_request: "
                     "dummy wait=1 call_site=arch_rethook_trampoline")
    load = parse_line("          insmod-530     [000] .....   153.905089: "
                      "module_load: kmodstorm OE")
    assert req is not None and load is not None
    assert (req.comm, req.tid, req.name, req.wait) == ("kmodstorm/4", 535, "dummy", True)
    assert (load.event, load.name) == ("module_load", "kmodstorm")


def test_comments_are_skipped_and_a_real_dump_parses_completely() -> None:
    text = DATA.read_text()
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    events = parse(text)
    assert len(events) == len(body) > 100
    enters = sum(e.event == "sys_enter_finit_module" for e in events)
    exits = sum(e.event == "sys_exit_finit_module" for e in events)
    assert enters == exits
