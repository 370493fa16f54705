"""Boot-time tracing: what the kernel recorded before the tracer attached.

A systemd-started tracer sees nothing before bcc has compiled and attached: the initramfs,
the modules systemd loads itself, the seconds of compiling. The kernel can record from
its first instant with no userspace at all (Documentation/trace/boottime-trace.rst and
kernel-parameters.txt): `trace_event=` enables trace events from the command line and
`kprobe_event=` defines (and enables) kprobe events there, all in the global tracefs buffer.

`cmdline()` is that line for the events the model needs: the hooks of tracer/probes.py,
as tracepoints where they are tracepoints and as kprobe events otherwise. Kprobe events
fetch arguments by register (`$arg1` would be expanded by GRUB's script) and read the
struct file of a finit_module call through member offsets taken from the kernel's BTF,
since no compiler runs at boot. `drain()` reads that buffer when the tracer has attached,
turns its lines into the same Event records the BPF program sends, and keeps each event
once: an event of the attach window that BPF saw too is dropped here.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer import kernel, tracefs
from tracer.btf import BTF, BTFError
from tracer.events import NAME_LEN, PATH_LEN, Event, Kind

# The kernel command line holds 2048 bytes (x86 COMMAND_LINE_SIZE), shared with the
# boot loader's and the user's words: the group is short, the tracepoints go without
# their system (trace_event= then matches the event name in any system).
GROUP = "kmt"
TRACEPOINTS = (
    "module_request",
    "module_load",
    "module_free",
    "sys_enter_finit_module",
    "sys_exit_finit_module",
    "sys_enter_init_module",
    "sys_exit_init_module",
)
# Per CPU. Module events are rare; do_exit fires for every exiting process, and the buffer
# costs this much memory on every CPU, so it stays small; overruns are counted, not hidden.
BUFFER_KB = 512
# Sleeping __request_module calls each hold an instance (the default is 2 * NR_CPUS).
MAXACTIVE = 512
# An event in the attach window counts as seen by BPF too when a BPF event of the same
# kind and thread lies this close: both fire in the same probe hit, microseconds apart.
MATCH_NS = 2_000_000
# Written to trace_marker when a tracer has drained the buffer and switched the boot-time
# probes off (do_exit fires on every exit): a later drain reads only what came before.
END_MARK = "kmodtrace: boot-time probes off"
# A word of its own on the line: kmodtrace-boot-beside.service runs where the command line
# has it (ConditionKernelCommandLine=), kmodtrace-boot.service where it does not. The
# kernel ignores an unknown parameter with a dot in its name (a module's parameter,
# init/main.c unknown_bootoption()) and passes it neither to init nor to its environment.
MARKER = "kmodtrace.early"
# udev's broadcasts (tracer/udev.py): a worker sends each device it has handled to the udev
# netlink group, and the kernel hands the message to netlink_broadcast(ssk, skb, portid,
# group, allocation) in the worker's own context. There the message is kernel memory
# (skb->data), so a fixed-size array fetch reads it (a user-memory array fetch, +u, fails
# to parse on 6.1: "String accepts only memory argument"). The message is systemd's
# struct monitor_netlink_header (40 bytes: "libudev\0", then the big-endian magic
# 0xfeedcafe, header_size, properties_off, properties_len, ...) followed by the
# properties, NUL-separated KEY=VALUE; the probe reads 16 bytes of the header from +8 and
# the properties' first PATH_LEN bytes, as the BPF program does.
UDEV_GROUP = 2  # MONITOR_GROUP_UDEV
UDEV_MAGIC = 0xFECAEDFE  # htobe32(0xfeedcafe), read as a little-endian u32
UDEV_HEADER = 40  # sizeof(struct monitor_netlink_header): where the properties start
UDEV_WORDS = PATH_LEN // 8


@dataclass(frozen=True, slots=True)
class Regs:
    args: tuple[str, ...]
    ret: str
    ret_addr: str  # the caller's address at function entry


# Registers, not $argN/$retval: GRUB expands `$name` in grub.cfg's linux lines.
REGS = {"x86_64": Regs(("%di", "%si", "%dx", "%cx", "%r8", "%r9"), "%ax", "+0(%sp)")}


class EarlyError(RuntimeError):
    """Boot-time tracing cannot be defined for this kernel; the message says why."""


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    ret: bool  # a return probe
    symbol: str
    args: tuple[str, ...] = ()  # "name=FETCHARG:TYPE"

    def definition(self) -> str:
        """As kprobe_events takes it, and lists it back."""
        head = f"r{MAXACTIVE}" if self.ret else "p"
        return " ".join((f"{head}:{GROUP}/{self.name}", self.symbol, *self.args))


def probes(btf: BTF, machine: str | None = None) -> list[Probe]:
    """The kprobe events of the early trace on the kernel BTF describes."""
    regs = REGS.get(machine or platform.machine())
    if regs is None:
        raise EarlyError(f"boot-time probes are defined for {', '.join(REGS)} only, "
                         f"not {machine or platform.machine()}")
    a, ret = regs.args, regs.ret
    symbol, id_arg = kernel.early_file_hook(btf.has_function)
    try:
        f_inode, f_dentry = btf.offset("file", "f_inode"), btf.offset("file", "f_path.dentry")
        d_name = btf.offset("dentry", "d_name.name")
        i_ino, i_size = btf.offset("inode", "i_ino"), btf.offset("inode", "i_size")
        i_sb, s_dev = btf.offset("inode", "i_sb"), btf.offset("super_block", "s_dev")
    except BTFError as e:
        raise EarlyError(f"the kernel's BTF lacks a member the file probe reads: {e}") from e
    inode = f"+{f_inode}({a[0]})"
    file_args = [f"name=+0(+{d_name}(+{f_dentry}({a[0]}))):string",
                 f"ino=+{i_ino}({inode}):u64", f"size=+{i_size}({inode}):s64",
                 f"dev=+{s_dev}(+{i_sb}({inode})):u32"]
    if id_arg is not None:
        file_args.append(f"id={a[id_arg]}:s32")
    return [
        # The return probe first: a probe registered later runs earlier on the same
        # address (kernel/kprobes.c add_new_kprobe), so the entry probe reads the return
        # address before the return probe swaps in its trampoline.
        Probe("req_exit", True, "__request_module", (f"ret={ret}:s32",)),
        Probe("req_enter", False, "__request_module", (
            f"wait={a[0]}:u8", f"ip={regs.ret_addr}:x64", f"fmt=+0({a[1]}):string",
            f"arg=+0({a[2]}):string")),
        Probe("umh_enter", False, "call_usermodehelper_exec", (f"ptr={a[0]}:x64",
                                                               f"wait={a[1]}:s32")),
        Probe("umh_exit", True, "call_usermodehelper_exec", (f"ret={ret}:s32",)),
        Probe("umh_spawn", False, "call_usermodehelper_exec_async", (f"ptr={a[0]}:x64",)),
        Probe("exit", False, "do_exit", (f"code={a[0]}:s64",)),
        Probe("file", False, symbol, tuple(file_args)),
        Probe("find", False, "find_module_all", (f"name=+0({a[0]}):string",
                                                 f"len={a[1]}:u64", f"even={a[2]}:u8")),
        Probe("init_enter", False, "do_init_module"),
        Probe("init_exit", True, "do_init_module", (f"ret={ret}:s32",)),
        *([] if (udev := udev_probe(btf, regs)) is None else [udev]),
    ]


def udev_probe(btf: BTF, regs: Regs) -> Probe | None:
    """netlink_broadcast's udev broadcasts (UDEV_GROUP above); None where the kernel has
    no netlink_broadcast (its udev devices are then not in the early trace)."""
    if not btf.has_function("netlink_broadcast"):
        return None
    try:
        data = btf.offset("sk_buff", "data")
    except BTFError as e:
        raise EarlyError(f"the kernel's BTF lacks a member the udev probe reads: {e}") from e
    a = regs.args
    msg = f"+{data}({a[1]})"
    return Probe("udev", False, "netlink_broadcast", (
        f"grp={a[3]}:u32", f"hdr=+8({msg}):x64[2]",
        f"props=+{UDEV_HEADER}({msg}):x64[{UDEV_WORDS}]"))


# Of the kernel command line's 2048 bytes (x86 COMMAND_LINE_SIZE, its NUL included) the
# words may take this many; the rest is the boot loader's and the user's (a GRUB line of
# Debian's is about 100 bytes; virtme-ng's, in the lab, about 1000).
CMDLINE_MAX = 2047
CMDLINE_BUDGET = 1000


def cmdline(btf: BTF, machine: str | None = None, buffer_kb: int = BUFFER_KB) -> str:
    """The kernel command line words that record the early trace; MARKER last."""
    defs = ";".join(p.definition().replace(" ", ",") for p in probes(btf, machine))
    line = " ".join((f"trace_event={','.join(TRACEPOINTS)}", f"kprobe_event={defs}",
                     f"trace_buf_size={buffer_kb}K", "trace_clock=mono", MARKER))
    if len(line) > CMDLINE_BUDGET:
        raise EarlyError(f"the boot-time tracing words take {len(line)} bytes, more than "
                         f"the {CMDLINE_BUDGET} of the kernel command line's {CMDLINE_MAX} "
                         "they may use")
    return line


def in_cmdline(text: str) -> bool:
    """Whether a kernel command line asks for the early trace."""
    return f":{GROUP}/" in text and "kprobe_event=" in text


# --- draining ------------------------------------------------------------------------------

def defined_probes(root: str) -> dict[str, str]:
    """Our kprobe events as the kernel lists them: name -> definition."""
    out: dict[str, str] = {}
    try:
        with open(os.path.join(root, "kprobe_events")) as f:
            for line in f:
                m = re.match(rf"[pr]\d*:{GROUP}/(\w+) ", line)
                if m:
                    out[m[1]] = " ".join(line.split())
    except OSError:
        pass
    return out


@dataclass(slots=True)
class _Pending:
    """A (f)init_module call being converted: its enter event, and what it looked up."""

    enter: Event
    name: str = ""


@dataclass(slots=True)
class Converter:
    """tracefs lines -> Events, shaped as the BPF program shapes them."""

    offset_ns: int = 0  # added to tracefs timestamps to get CLOCK_MONOTONIC
    ignore: frozenset[str] = frozenset()  # probe events whose definition is not ours
    reading_module: int | None = None  # READING_MODULE, for kernel_read_file's id
    resolve: Callable[[str], int] = lambda _sym: 0  # call-site symbol -> address
    events: list[Event] = field(default_factory=list)
    helpers: set[int] = field(default_factory=set)
    loading: dict[int, _Pending] = field(default_factory=dict)
    unparsed: int = 0
    end_mark_ns: int | None = None  # the first END_MARK

    def feed(self, text: str) -> None:
        for raw in text.splitlines():
            if not raw or raw.startswith("#"):
                continue
            line = tracefs.parse_line(raw)
            if line is None:
                self.unparsed += 1
                continue
            self._line(line)

    def drained(self) -> list[Event]:
        """The events fed, oldest first, up to the END_MARK of an earlier run that drained
        the buffer and switched the probes off (after it they are that run's BPF's)."""
        events = sorted(self.events, key=lambda e: e.ts_ns)
        if self.end_mark_ns is None:
            return events
        return [e for e in events if e.ts_ns < self.end_mark_ns]

    def _ev(self, line: tracefs.Line, kind: Kind, **values: Any) -> Event:
        ev = Event(ts_ns=line.ts_ns + self.offset_ns, kind=kind,
                   pid=line.tgid if line.tgid is not None else line.tid, tid=line.tid,
                   cpu=line.cpu, comm=line.comm[:15], **values)
        self.events.append(ev)
        return ev

    def _line(self, line: tracefs.Line) -> None:
        event = line.event
        if event in self.ignore:
            return
        if event == "tracing_mark_write" and END_MARK in line.rest:
            if self.end_mark_ns is None:
                self.end_mark_ns = line.ts_ns + self.offset_ns
            return
        handler = _HANDLERS.get(event)
        if handler is not None:
            handler(self, line)

    # requests

    def _req_enter(self, line: tracefs.Line) -> None:
        f = tracefs.fields(line.rest)
        # a vararg that is no string (char-major-%d-%d) reads as "(fault)"
        arg = "" if f.get("arg") == "(fault)" else f.get("arg", "")
        self._ev(line, Kind.REQ_ENTER, wait=tracefs.number(f.get("wait", "0")),
                 ip=tracefs.number(f.get("ip", "0")) & (1 << 64) - 1,
                 name=f.get("fmt", "")[:NAME_LEN - 1], path=arg[:PATH_LEN - 1])

    def _req_tp(self, line: tracefs.Line) -> None:
        # "fs-9p wait=1 call_site=get_fs_type"
        name, _, rest = line.rest.partition(" ")
        f = tracefs.fields(rest)
        self._ev(line, Kind.REQ_TP, name=name[:NAME_LEN - 1],
                 wait=tracefs.number(f.get("wait", "0")),
                 ip=self.resolve(f.get("call_site", "")))

    def _ret(self, line: tracefs.Line, kind: Kind) -> Event:
        return self._ev(line, kind, ret=tracefs.number(tracefs.fields(line.rest).get("ret", "0")))

    def _req_exit(self, line: tracefs.Line) -> None:
        self._ret(line, Kind.REQ_EXIT)

    def _umh_enter(self, line: tracefs.Line) -> None:
        f = tracefs.fields(line.rest)
        self._ev(line, Kind.UMH_ENTER, ptr=tracefs.number(f.get("ptr", "0")) & (1 << 64) - 1,
                 wait=tracefs.number(f.get("wait", "0")))

    def _umh_exit(self, line: tracefs.Line) -> None:
        self._ret(line, Kind.UMH_EXIT)

    def _umh_spawn(self, line: tracefs.Line) -> None:
        ev = self._ev(line, Kind.UMH_SPAWN,
                      ptr=tracefs.number(tracefs.fields(line.rest).get("ptr", "0")) & (1 << 64) - 1)
        self.helpers.add(ev.pid)

    def _exit(self, line: tracefs.Line) -> None:
        # the BPF program reports the exits of helpers only
        pid = line.tgid if line.tgid is not None else line.tid
        if pid in self.helpers:
            self.helpers.discard(pid)
            self._ev(line, Kind.HELPER_EXIT,
                     ret=tracefs.number(tracefs.fields(line.rest).get("code", "0")))

    # loads

    def _finit_enter(self, line: tracefs.Line) -> None:
        flags = tracefs.number(tracefs.syscall_args(line.rest).get("flags", "0"))
        self.loading[line.tid] = _Pending(self._ev(line, Kind.FINIT_ENTER, flags=flags))

    def _init_enter(self, line: tracefs.Line) -> None:
        size = tracefs.number(tracefs.syscall_args(line.rest).get("len", "0"))
        self.loading[line.tid] = _Pending(self._ev(line, Kind.INIT_ENTER, size=size))

    def _file(self, line: tracefs.Line) -> None:
        p = self.loading.get(line.tid)
        if p is None or p.enter.kind != Kind.FINIT_ENTER or p.enter.ino:
            return
        f = tracefs.fields(line.rest)
        if "id" in f and self.reading_module is not None and \
                tracefs.number(f["id"]) != self.reading_module:
            return  # kernel_read_file of a firmware or policy, not the module
        p.enter.path = f.get("name", "")[:PATH_LEN - 1]
        p.enter.ino = tracefs.number(f.get("ino", "0"))
        p.enter.size = tracefs.number(f.get("size", "0"))
        p.enter.dev = tracefs.number(f.get("dev", "0"))

    def _find(self, line: tracefs.Line) -> None:
        p = self.loading.get(line.tid)
        f = tracefs.fields(line.rest)
        if p is None or p.name or tracefs.number(f.get("even", "0")) == 0:
            return
        p.name = f.get("name", "")[:max(0, min(tracefs.number(f.get("len", "0")),
                                               NAME_LEN - 1))]

    def _load_exit(self, line: tracefs.Line, kind: Kind) -> None:
        p = self.loading.pop(line.tid, None)
        self._ev(line, kind, ret=tracefs.number(line.rest), name=p.name if p else "")

    def _finit_exit(self, line: tracefs.Line) -> None:
        self._load_exit(line, Kind.FINIT_EXIT)

    def _init_exit(self, line: tracefs.Line) -> None:
        self._load_exit(line, Kind.INIT_EXIT)

    # udev

    def _udev(self, line: tracefs.Line) -> None:
        """A udev worker's broadcast of the device it handled: UDEV_DEVICE as the BPF
        program sends it (properties newline-separated, size their length)."""
        f = tracefs.fields(line.rest)
        if tracefs.number(f.get("grp", "0")) != UDEV_GROUP:
            return  # a kernel uevent (group 1), rtnetlink...
        hdr, props = words(f.get("hdr", "")), words(f.get("props", ""))
        if len(hdr) != 2 or len(props) != UDEV_WORDS or hdr[0] & 0xFFFFFFFF != UDEV_MAGIC \
                or hdr[1] & 0xFFFFFFFF != UDEV_HEADER:
            return  # not systemd's monitor message, or laid out otherwise
        length = hdr[1] >> 32
        raw = b"".join(w.to_bytes(8, "little") for w in props)[:min(length, PATH_LEN - 1)]
        text = raw.replace(b"\0", b"\n").decode("utf-8", "surrogateescape")
        self._ev(line, Kind.UDEV_DEVICE, size=length, path=text)

    def _mod_load(self, line: tracefs.Line) -> None:
        self._ev(line, Kind.MOD_LOAD, name=line.rest.split(" ")[0][:NAME_LEN - 1])

    def _mod_free(self, line: tracefs.Line) -> None:
        self._ev(line, Kind.MOD_FREE, name=line.rest.split(" ")[0][:NAME_LEN - 1])

    def _init_enter_mod(self, line: tracefs.Line) -> None:
        self._ev(line, Kind.MODINIT_ENTER)

    def _init_exit_mod(self, line: tracefs.Line) -> None:
        self._ret(line, Kind.MODINIT_EXIT)


_HANDLERS: dict[str, Callable[[Converter, tracefs.Line], None]] = {
    "req_enter": Converter._req_enter,
    "module_request": Converter._req_tp,
    "req_exit": Converter._req_exit,
    "umh_enter": Converter._umh_enter,
    "umh_exit": Converter._umh_exit,
    "umh_spawn": Converter._umh_spawn,
    "exit": Converter._exit,
    "sys_enter_finit_module": Converter._finit_enter,
    "sys_enter_init_module": Converter._init_enter,
    "file": Converter._file,
    "find": Converter._find,
    "sys_exit_finit_module": Converter._finit_exit,
    "sys_exit_init_module": Converter._init_exit,
    "module_load": Converter._mod_load,
    "module_free": Converter._mod_free,
    "init_enter": Converter._init_enter_mod,
    "init_exit": Converter._init_exit_mod,
    "udev": Converter._udev,
}
# What an early event lacks beside a BPF one (the trace's "early" record says so).
NOT_EARLY = {
    "module length without signature": "module_sig_check's info->len needs the entry "
                                       "argument at return; loads count the bytes read",
    "requester's parent, modprobe's path": "read from task and subprocess_info structs",
}


def words(text: str) -> list[int]:
    """An x64 array as tracefs prints it, "{0x1,0x2}", as unsigned numbers ([] if it is
    none: a fetch that faulted prints no array)."""
    if not (text.startswith("{") and text.endswith("}")):
        return []
    try:
        return [int(w, 16) & (1 << 64) - 1 for w in text[1:-1].split(",")]
    except ValueError:
        return []


def keep_once(early: list[Event], bpf: Iterable[Event], begin_ns: int,
              end_ns: int) -> tuple[list[Event], int, int]:
    """The early events BPF did not see: all before begin_ns; in [begin_ns, end_ns) those
    with no BPF event of the same kind and thread within MATCH_NS; none from end_ns on,
    when every hook was attached. Returns (kept, seen by both, after attach)."""
    index: dict[tuple[int, int], list[int]] = {}
    for ev in bpf:
        if ev.ts_ns < end_ns + MATCH_NS:
            index.setdefault((ev.kind, ev.tid), []).append(ev.ts_ns)
    kept, both, after = [], 0, 0
    for ev in early:
        if ev.ts_ns < begin_ns:
            kept.append(ev)
        elif ev.ts_ns >= end_ns:
            after += 1
        else:
            times = index.get((ev.kind, ev.tid), [])
            hit = next((i for i, t in enumerate(times) if abs(t - ev.ts_ns) <= MATCH_NS), None)
            if hit is None:
                kept.append(ev)
            else:
                del times[hit]  # one BPF event matches one early event
                both += 1
    return kept, both, after


def clock_offset(root: str, clock: str) -> int | None:
    """CLOCK_MONOTONIC minus the trace clock, from a marker written now; 0 for mono."""
    if clock == "mono":
        return 0
    tag = f"kmodtrace-clock-{os.getpid()}-{time.monotonic_ns()}"
    try:
        t0 = time.monotonic_ns()
        with open(os.path.join(root, "trace_marker"), "w") as f:
            f.write(tag)
        t1 = time.monotonic_ns()
        with open(os.path.join(root, "trace"), errors="surrogateescape") as f:
            for raw in f:
                if tag in raw:
                    line = tracefs.parse_line(raw)
                    return None if line is None else (t0 + t1) // 2 - line.ts_ns
    except OSError:
        return None
    return None


@dataclass(slots=True)
class Drained:
    events: list[Event]  # to merge, oldest first
    info: dict[str, Any]  # the trace's "early" record


def drain(root: str, begin_ns: int, end_ns: int, bpf: Iterable[Event],
          load_btf: Callable[[], BTF | None], cmdline_text: str = "",
          resolve: Callable[[str], int] = lambda _sym: 0) -> Drained:
    """The early trace in the global buffer at ROOT, as events to merge before BPF's.

    begin_ns/end_ns: when attaching began and ended (CLOCK_MONOTONIC); bpf: the BPF events
    received so far (all of those up to end_ns); load_btf: the running kernel's BTF (None
    where it has none), whose probe definitions tell a stale boot-time definition apart,
    called only where there is something to drain (parsing it takes seconds under
    emulation while events wait); resolve: a call-site symbol's address.
    """
    info: dict[str, Any] = {"attach_begin_ns": begin_ns, "attach_end_ns": end_ns,
                            "configured": in_cmdline(cmdline_text)}
    defined = defined_probes(root)
    info["probes"] = sorted(defined)
    if not info["configured"] and not defined:
        info["ignored_probes"] = []
        info["gap"] = "no boot-time tracing on this boot's command line (kmodtrace boot " \
                      "install prints the line): nothing before attach was seen"
        return Drained([], info)
    btf = load_btf()
    expected: list[Probe] | None = None
    if btf is not None:
        try:
            expected = probes(btf)
        except EarlyError:
            expected = None
    ignore: set[str] = set()
    if expected is not None:
        want = {p.name: p.definition() for p in expected}
        ignore = {n for n, d in defined.items() if want.get(n) != d}
    info["ignored_probes"] = sorted(ignore)
    clock = tracefs.current_clock(root)
    offset = clock_offset(root, clock)
    info["clock"], info["clock_offset_ns"] = clock, offset
    if offset is None:
        info["gap"] = f"the trace clock {clock!r} could not be aligned with CLOCK_MONOTONIC"
        return Drained([], info)
    info["overrun"] = tracefs.overrun(root)
    conv = Converter(offset_ns=offset, ignore=frozenset(ignore),
                     reading_module=btf.enum_value("READING_MODULE") if btf else None,
                     resolve=resolve)
    try:
        # names are bytes a process chose: kept exact, as tracer/text.py says
        with open(os.path.join(root, "trace"), errors="surrogateescape") as f:
            conv.feed(f.read())
    except OSError as e:
        info["gap"] = f"cannot read the kernel's trace buffer: {e.strerror}"
        return Drained([], info)
    events = conv.drained()
    if conv.end_mark_ns is not None:
        info["probes_off_ns"] = conv.end_mark_ns
    kept, both, after = keep_once(events, bpf, begin_ns, end_ns)
    info.update(events=len(kept), seen_by_both=both, after_attach=after,
                unparsed_lines=conv.unparsed,
                first_ns=events[0].ts_ns if events else None,
                not_early=sorted(NOT_EARLY))
    if info["overrun"]:
        info["gap"] = (f"the kernel's buffer overwrote {info['overrun']} of its oldest events: "
                       "the start of this boot is missing (a larger trace_buf_size keeps it)")
    return Drained(kept, info)


def summary(info: dict[str, Any] | None, events: int | None = None) -> str:
    """One line on what the trace holds from before the tracer attached (INFO: the
    "early" record; None for a trace that has none)."""
    if info is None:
        return "events before the tracer attached are not in this trace"
    end = info.get("attach_end_ns")
    at = f"{end / 1e9:.2f} s" if isinstance(end, int) else "attach"
    n = info.get("events", 0) if events is None else events
    if "gap" in info and not n:
        return f"before {at}: {info['gap']}"
    line = (f"{n} events from the kernel's boot-time trace, before the tracer attached "
            f"at {at} ({info.get('seen_by_both', 0)} seen by both, kept once)")
    if info.get("ignored_probes"):
        line += (f"; probes defined for another kernel, ignored: "
                 f"{', '.join(info['ignored_probes'])} (run `kmodtrace boot install` again)")
    if "gap" in info:
        line += f"; {info['gap']}"
    return line


def traced_from_ns(info: dict[str, Any] | None, start_ns: int | None) -> int | None:
    """Where the trace's view of the boot begins: the kernel's first instant when the
    boot-time buffer kept everything, else its oldest event, else the tracer's start."""
    if info is None or (not info.get("probes") and not info.get("configured")):
        return start_ns
    if "clock_offset_ns" not in info or info.get("clock_offset_ns") is None:
        return start_ns
    if info.get("overrun"):
        first = info.get("first_ns")
        return first if isinstance(first, int) else start_ns
    return 0


def probes_off(root: str) -> bool:
    """Switch our boot-time kprobe events off once drained (the tracepoints cost nothing
    between module loads, do_exit's probe costs on every exit), and mark where."""
    try:
        with open(os.path.join(root, "trace_marker"), "w") as f:
            f.write(END_MARK)
        with open(os.path.join(root, "events", GROUP, "enable"), "w") as f:
            f.write("0")
    except OSError:
        return False
    return True
