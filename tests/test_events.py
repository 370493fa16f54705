"""The event layout is one fact: the dataclass, the generated C and the decoder agree."""

from __future__ import annotations

import ctypes
import random
import re
import subprocess
from collections.abc import Callable

from tracer.events import LAYOUT, CEvent, Event, Kind, c_definitions, decode
from tracer.probes import (
    BPF_SOURCE,
    HOOKS,
    RESCUE_HOOK,
    Hook,
    Tracer,
    program_text,
    syscall_twin,
)


def test_c_struct_lists_every_field_in_order() -> None:
    text = c_definitions()
    body = text[text.index("struct event {"):]
    fields = re.findall(r"^\s+(?:u32|u64|s64|char) (\w+)", body, re.M)
    assert fields == [name for name, _, _ in LAYOUT]
    assert "char comm[16];" in body


def test_kinds_are_defined_for_c() -> None:
    text = c_definitions()
    for k in Kind:
        assert f"#define KIND_{k.name} {k.value}\n" in text


def test_bpf_program_uses_only_defined_fields_and_kinds() -> None:
    src = BPF_SOURCE.read_text()
    names = {name for name, _, _ in LAYOUT}
    used = set(re.findall(r"\be->(\w+)", src))
    assert used and used <= names, used - names
    kinds = set(re.findall(r"KIND_(\w+)", src))
    assert kinds <= {k.name for k in Kind}
    # Every kind the correlator understands is produced somewhere in C.
    assert kinds == {k.name for k in Kind}


def test_ctypes_layout_is_naturally_aligned() -> None:
    # clang lays the C struct out with natural alignment; so must ctypes.
    offset = 0
    for name, ctype, size in LAYOUT:
        align = 1 if ctype == "char" else (4 if ctype == "u32" else 8)
        offset = (offset + align - 1) // align * align
        assert getattr(CEvent, name).offset == offset, name
        offset += size if ctype == "char" else align
    assert ctypes.sizeof(CEvent) == (offset + 7) // 8 * 8


def test_decode_round_trip_from_raw_bytes() -> None:
    c = CEvent(ts_ns=123, kind=Kind.FINIT_EXIT, pid=7, tid=8, ret=-17, comm=b"modprobe",
               name=b"xfs", path=b"xfs.ko")
    ev = decode(bytes(c))
    assert ev == Event(ts_ns=123, kind=int(Kind.FINIT_EXIT), pid=7, tid=8, ret=-17,
                       comm="modprobe", name="xfs", path="xfs.ko")
    assert ev.kind_name == "FINIT_EXIT"


def test_decode_from_a_pointer_like_bcc_passes() -> None:
    c = CEvent(kind=Kind.REQ_TP, name=b"fs-xfs", ip=0xFFFFFFFF81000000)
    ev = decode(ctypes.cast(ctypes.pointer(c), ctypes.c_void_p).value)
    assert ev.name == "fs-xfs" and ev.ip == 0xFFFFFFFF81000000


def test_full_width_strings_and_bad_utf8_survive() -> None:
    c = CEvent(kind=Kind.REQ_TP, comm=b"x" * 16, name=b"\xff" + b"a" * 63)
    ev = decode(bytes(c))
    assert ev.comm == "x" * 16
    assert ev.name.endswith("a" * 63) and len(ev.name) == 64


def test_dict_round_trip_ignores_unknown_keys() -> None:
    ev = Event(ts_ns=5, kind=3, name="net-pf-5", wait=1)
    assert Event.from_dict(ev.to_dict() | {"type": "event", "future": 1}) == ev


def _ctypes_decode(raw: bytes) -> Event:
    """The field-by-field reading decode() replaced: ctypes' own view of the C struct."""
    c = CEvent.from_buffer_copy(raw)
    return Event(*(getattr(c, n).decode("utf-8", "surrogateescape") if t == "char"
                   else getattr(c, n) for n, t, _ in LAYOUT))


def test_decode_reads_every_field_where_ctypes_does() -> None:
    # random records, strings with bytes after their NUL and bad UTF-8 included: the one
    # struct.unpack must agree with ctypes' offsets and sizes, field by field
    rng = random.Random(14)
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(ctypes.sizeof(CEvent)))
        assert decode(raw) == _ctypes_decode(raw)
    assert decode(bytes(ctypes.sizeof(CEvent))) == Event()


def _preprocessed(defines: list[str]) -> str:
    """The BPF program after the C preprocessor with DEFINES, as clang parses it (its
    #include lines left out: no kernel headers here, and none holds these flags)."""
    text = "\n".join(line for line in program_text().splitlines()
                     if not line.lstrip().startswith("#include"))
    return subprocess.run(["gcc", "-E", "-P", "-x", "c", *defines, "-"], input=text,
                          capture_output=True, text=True, check=True).stdout


def test_the_program_without_the_throttle_fexit_names_none_of_its_flags() -> None:
    # A kernel without BPF trampolines gets the program without the fexit's -D flags
    # (probes.py _compile_trampolines): clang rejects any use of them left outside their
    # #if, even in an unused function, and the tracer would not attach at all.
    plain = _preprocessed([])
    assert not re.findall(r"\bKMOD_[A-Z]+\b", plain)
    assert "down_timeout" not in plain
    # with the flags the tracer makes from kallsyms, every one it names is given
    syms = {"kmod_concurrent_max": ("d", 0xffffffff81000000), "down_timeout": ("T", 1),
            "bpf_trampoline_link_prog": ("T", 2)}
    hook, flags = Tracer._throttle_rescue(syms)
    assert hook is RESCUE_HOOK
    rescued = _preprocessed(flags)
    assert not re.findall(r"\bKMOD_[A-Z]+\b", rescued)
    assert "KRETFUNC_PROBE(down_timeout," in rescued and "-62" in rescued
    # and no build hooks schedule_timeout (see the program's comment on KMOD_SEM)
    assert "schedule_timeout" not in plain + rescued


def test_each_module_syscall_tracepoint_has_a_trampoline_twin_in_the_program() -> None:
    twins = {h.target: syscall_twin(h) for h in HOOKS}
    assert {t: (tw[0].probe_type, tw[0].target, tw[1]) for t, tw in twins.items() if tw} == {
        "syscalls:sys_enter_finit_module": ("kfunc", "__x64_sys_finit_module",
                                            "-DSYS_FENTRY_FINIT_MODULE"),
        "syscalls:sys_exit_finit_module": ("kretfunc", "__x64_sys_finit_module",
                                           "-DSYS_FEXIT_FINIT_MODULE"),
        "syscalls:sys_enter_init_module": ("kfunc", "__x64_sys_init_module",
                                           "-DSYS_FENTRY_INIT_MODULE"),
        "syscalls:sys_exit_init_module": ("kretfunc", "__x64_sys_init_module",
                                          "-DSYS_FEXIT_INIT_MODULE"),
        "syscalls:sys_enter_sendmsg": ("kfunc", "__x64_sys_sendmsg", "-DSYS_FENTRY_SENDMSG"),
    }
    # the tracepoints of other groups have none, whatever their event's name
    assert twins["module:module_load"] is None
    assert syscall_twin(Hook("tracepoint", "raw:sys_enter_finit_module", "", "")) is None
    # Each flag compiles in the one program bcc attaches by its name, and only it; the
    # tracepoint build has none of them.
    plain = _preprocessed([])
    assert "KFUNC_PROBE" not in plain and "__x64_sys" not in plain
    for hook, flag in filter(None, twins.values()):
        macro = "KFUNC_PROBE" if hook.probe_type == "kfunc" else "KRETFUNC_PROBE"
        text = _preprocessed([flag])
        assert re.findall(r"\b(KR?E?T?FUNC_PROBE)\((\w+),", text) == [
            (macro, hook.target)], flag
        assert hook.fn == f"{hook.probe_type}__{hook.target}"
    # both builds read the same arguments: fd and flags, len, msg
    fentry = _preprocessed([f for _h, f in filter(None, twins.values())])
    tp = _preprocessed([f"-DHAVE_TP_{t.split(':')[1].upper()}" for t, tw in twins.items()
                        if tw])
    assert "finit_enter((int)r.di, (u32)r.dx)" in fentry
    assert "finit_enter(args->fd, args->flags)" in tp
    assert "init_enter(r.si)" in fentry and "init_enter(args->len)" in tp
    assert "udev_sendmsg((const void *)r.si)" in fentry and "udev_sendmsg(args->msg)" in tp


def test_where_trampolines_can_be_preempted_the_module_syscalls_get_kprobes() -> None:
    """kernel.preemption() true: finit_module and init_module by kprobe/kretprobe on the
    wrapper (a kprobe runs with preemption disabled, a trampoline does not); sendmsg
    keeps its fentry. Each flag compiles in the two functions attach() attaches."""
    twins = {h.target: syscall_twin(h, kprobes=True) for h in HOOKS}
    assert {t: (tw[0].probe_type, tw[0].target, tw[0].fn, tw[1])
            for t, tw in twins.items() if tw} == {
        "syscalls:sys_enter_finit_module": ("kprobe", "__x64_sys_finit_module",
                                            "sys_finit_module_enter",
                                            "-DSYS_KPROBE_FINIT_MODULE"),
        "syscalls:sys_exit_finit_module": ("kretprobe", "__x64_sys_finit_module",
                                           "sys_finit_module_exit",
                                           "-DSYS_KPROBE_FINIT_MODULE"),
        "syscalls:sys_enter_init_module": ("kprobe", "__x64_sys_init_module",
                                           "sys_init_module_enter",
                                           "-DSYS_KPROBE_INIT_MODULE"),
        "syscalls:sys_exit_init_module": ("kretprobe", "__x64_sys_init_module",
                                          "sys_init_module_exit",
                                          "-DSYS_KPROBE_INIT_MODULE"),
        "syscalls:sys_enter_sendmsg": ("kfunc", "__x64_sys_sendmsg", "kfunc____x64_sys_sendmsg",
                                       "-DSYS_FENTRY_SENDMSG"),
    }
    assert "sys_finit_module_enter" not in _preprocessed([])
    text = _preprocessed(["-DSYS_KPROBE_FINIT_MODULE", "-DSYS_KPROBE_INIT_MODULE"])
    fns = re.findall(r"^int (sys_\w+)\(", text, re.M)
    assert fns == ["sys_finit_module_enter", "sys_finit_module_exit",
                   "sys_init_module_enter", "sys_init_module_exit"]
    assert "finit_enter((int)r.di, (u32)r.dx)" in text and "init_enter(r.si)" in text
    assert "KFUNC_PROBE" not in text


def test_preemption_is_read_from_the_kernel() -> None:
    from tracer.kernel import preemption

    def mode(value: int) -> Callable[[int, int], bytes | None]:
        return lambda addr, size: value.to_bytes(4, "little", signed=True) \
            if (addr, size) == (0x1000, 4) else None

    none = lambda _a, _s: None  # noqa: E731
    dynamic = {"preempt_schedule": ("T", 1), "preempt_dynamic_mode": ("D", 0x1000)}
    # CONFIG_PREEMPTION=n: no preempt_schedule, whatever can be read
    assert preemption({}, mode(3)) == (False, "none/voluntary build")
    # PREEMPT_DYNAMIC: the mode chosen at boot (Debian's 6.x voluntary, 7.3 lazy)
    assert preemption(dynamic, mode(1)) == (False, "voluntary")
    assert preemption(dynamic, mode(0)) == (False, "none")
    assert preemption(dynamic, mode(2)) == (True, "full")
    assert preemption(dynamic, mode(3)) == (True, "lazy")
    # unreadable (no /proc/kcore, kallsyms hides the address): the safe guess
    assert preemption(dynamic, none) == (True, "unknown")
    assert preemption({**dynamic, "preempt_dynamic_mode": ("D", 0)}, mode(1)) == \
        (True, "unknown")
    # a preemptible build without PREEMPT_DYNAMIC (PREEMPT, PREEMPT_RT)
    assert preemption({"preempt_schedule": ("T", 1)}, none) == (True, "preemptible build")
