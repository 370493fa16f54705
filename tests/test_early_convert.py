"""tracefs lines of a real boot -> the Events BPF would send -> joined, judged stories.

tests/data/vm-6.1-early/ holds what a 16-vCPU systemd boot of Debian 6.1 (`kmodtrace vm
--boot --cpus 16`) left in the kernel's global trace buffer with the words of `kmodtrace
boot cmdline` on its command line (trace.txt, read at the end of the boot, so the
boot-time probes run until the tracer switched them off) and the definitions the kernel
listed (kprobe_events). The lab's witness parser reads each event of the same text its own way.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kmodlab.witness import parse
from tracer import early
from tracer.events import Kind
from tracer.model import PROFILE_6_1
from tracer.session import replay

DATA = Path(__file__).parent / "data" / "vm-6.1-early"


@pytest.fixture(scope="module")
def text() -> str:
    return (DATA / "trace.txt").read_text()


def convert(text: str) -> early.Converter:
    conv = early.Converter()
    conv.feed(text)
    conv.events = conv.drained()
    return conv


def test_every_line_is_read(text: str) -> None:
    conv = convert(text)
    assert conv.unparsed == 0
    assert conv.end_mark_ns is not None  # the tracer switched the probes off, and said so
    defined = {ln.split()[0].split("/")[1] for ln in (DATA / "kprobe_events").read_text()
               .splitlines()}
    assert defined == {"req_exit", "req_enter", "umh_enter", "umh_exit", "umh_spawn", "exit",
                       "file", "find", "init_enter", "init_exit"}


def test_loads_match_the_witness_parser(text: str) -> None:
    """Before the marker, one load per (f)init_module call the witness parser sees, on the
    same threads with the same results, each with its file and the module's name."""
    conv = convert(text)
    end = conv.end_mark_ns or 0
    ws = [w for w in parse(text) if w.ts_ns < end]
    want = Counter((w.tid, w.ret) for w in ws if w.event.startswith("sys_exit_")
                   and w.event.endswith("init_module"))
    _, rep = None, replay(conv.events, PROFILE_6_1)
    got = Counter((ld.tid, ld.ret) for ld, _ in rep.loads)
    assert got == want and got
    for ld, v in rep.loads:
        if ld.syscall == "finit_module":
            assert ld.file.endswith(".ko") and ld.ino > 0 and ld.size > 0, ld
            assert ld.module == ld.file.removesuffix(".ko").replace("-", "_"), ld
        assert v is not None and v.outcome


def test_requests_are_whole_stories(text: str) -> None:
    """Every request the kernel's module_request event names is a story with its modprobe
    pid, exit status and return value, and a caller that is no kretprobe trampoline."""
    conv = convert(text)
    end = conv.end_mark_ns or 0
    names = Counter(w.name for w in parse(text)
                    if w.event == "module_request" and w.ts_ns < end)
    _, rep = None, replay(conv.events, PROFILE_6_1)
    reqs = [r for r, _ in rep.requests if r.name]
    assert Counter(r.name for r in reqs) == names and names
    for r in reqs:
        assert r.modprobe_pid and r.modprobe_exit is not None and r.ret is not None, r
        assert r.ip != 0
    # the callers' addresses, not the one of the return probe's trampoline
    assert len({r.ip for r in reqs}) >= 3
    spawned = [e for e in conv.events if e.kind == Kind.UMH_SPAWN]
    exits = [e for e in conv.events if e.kind == Kind.HELPER_EXIT]
    assert len(exits) <= len(spawned) and exits


def test_drain_of_that_buffer(tmp_path: Path, text: str) -> None:
    """early.drain() over a tracefs laid out as the kernel's, holding that boot's buffer:
    every event before the marker kept (the tracer attached after them), BTF asked for
    once, call sites resolved; with no boot-time tracing, BTF is never parsed."""
    (tmp_path / "trace").write_text(text)
    (tmp_path / "trace_clock").write_text("local global counter uptime perf [mono] mono_raw\n")
    (tmp_path / "kprobe_events").write_text((DATA / "kprobe_events").read_text())
    asked: list[int] = []

    def load_btf() -> None:
        asked.append(1)

    end = 10**15  # attached long after the boot's events
    d = early.drain(str(tmp_path), end, end + 1, [], load_btf, "quiet",
                    resolve=lambda sym: 0xFFFF0000 if sym else 0)
    assert asked == [1]
    assert len(d.events) == len(convert(text).events) == d.info["events"] > 0
    assert d.info["overrun"] == 0 and d.info["clock_offset_ns"] == 0
    assert d.info["probes_off_ns"] == convert(text).end_mark_ns
    assert all(e.ip == 0xFFFF0000 for e in d.events if e.kind == Kind.REQ_TP)
    (tmp_path / "kprobe_events").write_text("")
    none = early.drain(str(tmp_path), end, end + 1, [], load_btf, "quiet")
    assert asked == [1] and none.events == [] and "gap" in none.info
