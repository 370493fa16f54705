"""The event record: the one definition shared by the BPF program and Python.

`Event` below is the source. `c_definitions()` generates the C struct and the
KIND_* constants that tracer/bpf/kmodtrace.bpf.c is compiled with, and `CEvent` is the
ctypes twin used to decode ring-buffer records, so the layouts cannot drift.
Fields are plain u32/u64/s64/char[N], the only types bcc decodes reliably.
"""

from __future__ import annotations

import ctypes
import enum
import struct
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

# The C type first (LAYOUT reads it), then the bounds msgspec checks as a trace line
# decodes: a value no hook can produce is a bad line. (msgspec takes no bound past int64:
# a u64 is checked for its sign only.)
U32 = Annotated[int, "u32", msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, "u64", msgspec.Meta(ge=0)]
S64 = Annotated[int, "s64", msgspec.Meta(ge=-2**63, le=2**63 - 1)]


def Str(size: int) -> Any:
    return Annotated[str, ("char", size)]


class Kind(enum.IntEnum):
    """What produced an event; the comment names the hook."""

    REQ_ENTER = 1  # kprobe __request_module: wait, fmt (name), first vararg (path)
    REQ_EXIT = 2  # kretprobe __request_module: ret
    REQ_TP = 3  # tracepoint module:module_request: name, wait, ip
    UMH_ENTER = 4  # kprobe call_usermodehelper_exec: ptr, path, name (last argv), wait
    UMH_EXIT = 5  # kretprobe call_usermodehelper_exec: ret
    UMH_SPAWN = 6  # kprobe call_usermodehelper_exec_async: ptr; pid is the helper
    HELPER_EXIT = 7  # kprobe do_exit of a helper pid: ret is the exit code
    FINIT_ENTER = 8  # sys_enter_finit_module: path (file name), dev, ino, size, flags
    FINIT_EXIT = 9  # sys_exit_finit_module: ret, name (module name seen by the kernel)
    INIT_ENTER = 10  # sys_enter_init_module: size (len)
    INIT_EXIT = 11  # sys_exit_init_module: ret, name
    MOD_LOAD = 12  # tracepoint module:module_load: name, flags (taints)
    MODINIT_ENTER = 13  # kprobe do_init_module
    MODINIT_EXIT = 14  # kretprobe do_init_module: ret
    MOD_FREE = 15  # tracepoint module:module_free: name
    # Only on kernels with CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS (the oracle):
    DUP_VERDICT = 16  # kretprobe kmod_dup_request_exists_wait: wait = duplicate?, ret = dup_ret
    DUP_ANNOUNCE = 17  # kprobe kmod_dup_request_announce: name, ret
    # tracepoint syscalls:sys_enter_sendmsg of udev's "device processed" broadcast:
    # path = its first properties, newline-separated (ACTION, DEVPATH, SUBSYSTEM...)
    UDEV_DEVICE = 18
    # kretprobe module_sig_check: size = info->len without the signature, ret
    MOD_LEN = 19
    # kprobe kmod_dup_request_exists_wait, just before kmod_dup_mutex (dups.c only)
    DUP_ENTER = 20
    # kprobe module_patient_check_exists: flags = reason (0 Becoming, 1 Load)
    PATIENT_CHECK = 21


# A kind of the Kind enum, which msgspec checks on decoding (an unknown kind is a bad line)
KnownKind = Annotated[int, "u32", msgspec.Meta(ge=int(min(Kind)), le=int(max(Kind)))]
NAME_LEN: int = 64
PATH_LEN = 128


class Event(msgspec.Struct, tag="event", tag_field="type", forbid_unknown_fields=True,
            gc=False, omit_defaults=True):
    """One hook's record. A msgspec Struct: a trace line decodes straight into one, in C
    (a JSON event line is this struct with "type": "event"); instances hold only ints and
    strings, so the cyclic GC need not track the millions a replay keeps. Encoded, it
    omits fields at their defaults: a trace line holds what the hook set."""

    # CLOCK_MONOTONIC (bpf_ktime_get_ns); bounded as a u64 cannot be, and 2**63 ns are
    # 292 years of uptime
    ts_ns: Annotated[int, "u64", msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    kind: KnownKind = 0
    pid: U32 = 0  # tgid
    tid: U32 = 0
    ppid: U32 = 0
    cpu: U32 = 0
    wait: U32 = 0
    flags: U32 = 0
    ret: S64 = 0
    ip: U64 = 0
    ptr: U64 = 0
    dev: U64 = 0
    ino: U64 = 0
    size: U64 = 0
    comm: Annotated[str, ("char", 16)] = ""
    name: Annotated[str, ("char", NAME_LEN)] = ""
    path: Annotated[str, ("char", PATH_LEN)] = ""

    @property
    def kind_name(self) -> str:
        try:
            return Kind(self.kind).name
        except ValueError:
            return f"KIND_{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies each value, and the recorder calls this
        # for every event
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_dict(cls, d: dict[str, Any], unknown_ok: bool = True) -> Event:
        """Build from a trace line, popping its "type" key; TypeError if a field has the
        wrong type, or is unknown and not UNKNOWN_OK. The common case is checked in C
        (zip/map/issuperset): replay reads a million of these."""
        d.pop("type", None)
        if not _VALID_PAIRS.issuperset(zip(d, map(type, d.values()), strict=False)):
            unknown = d.keys() - _FIELD_TYPES.keys()
            if unknown and not unknown_ok:
                raise TypeError(f"unknown field {sorted(unknown)[0]}")
            d = {k: v for k, v in d.items() if k in _FIELD_TYPES}
            for name, v in d.items():
                if type(v) is not _FIELD_TYPES[name]:
                    raise TypeError(f"field {name}: {type(v).__name__}, "
                                    f"expected {_FIELD_TYPES[name].__name__}")
        return cls(**d)


def _layout() -> list[tuple[str, str, int]]:
    """(field, C scalar type or 'char', array size) in declaration order."""
    hints = typing.get_type_hints(Event, include_extras=True)
    out = []
    for name in Event.__struct_fields__:
        meta = hints[name].__metadata__[0]
        if isinstance(meta, tuple):
            out.append((name, meta[0], meta[1]))
        else:
            out.append((name, meta, 0))
    return out


LAYOUT = _layout()
_FIELD_TYPES: dict[str, type] = {n: str if c == "char" else int for n, c, _ in LAYOUT}
_FIELD_NAMES = tuple(_FIELD_TYPES)
# (field, type) of every valid field of an event
_VALID_PAIRS = frozenset(_FIELD_TYPES.items())
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in msgspec.structs.fields(Event)}
# A record's builder: its values in key order -> the event (see RecordDecoder)
_Builder = Callable[..., Event]


class RecordDecoder:
    """Events from decoded trace records (dicts), checked as Event.from_dict checks them,
    several times faster: the trace reader's path for the lines msgspec does not take.

    A record's keys, in order, decide which of them are fields, so each key order is
    judged once and gets a builder (generated code) that takes the values by position,
    checks their types (a bool is not an int) and calls Event positionally. Event(**d)
    instead matches each key against the 17 parameter names by string comparison. A
    recorder writes a few key orders per event kind; a file of ever new ones (corrupt or
    hostile) stops being cached after _MAX_SHAPES.
    """

    _MAX_SHAPES = 4096

    def __init__(self, extra: frozenset[str], required: frozenset[str]) -> None:
        # EXTRA: keys of the record that are not fields, of any type (ignored);
        # REQUIRED: fields a valid record must have
        self.extra = extra
        self.required = required
        self._shapes: dict[tuple[str, ...], _Builder | None] = {}

    def __call__(self, d: dict[str, Any]) -> Event | None:
        """D's event; None if it lacks a required field, has a key that is neither a field
        nor extra, or a field of the wrong type (a bool is not an int)."""
        keys = tuple(d)
        try:
            build = self._shapes[keys]
        except KeyError:
            build = self._builder(keys)
            if len(self._shapes) < self._MAX_SHAPES:
                self._shapes[keys] = build
        return None if build is None else build(*d.values())

    def _builder(self, keys: tuple[str, ...]) -> _Builder | None:
        if not self.required.issubset(keys):
            return None
        if any(key not in self.extra and key not in _FIELD_TYPES for key in keys):
            return None
        # Parameters are the record's keys in order: JSON keys are any strings, so they
        # are named by position, never spliced into the code.
        params = [f"v{i}" for i in range(len(keys))]
        where = {k: p for k, p in zip(keys, params, strict=True) if k not in self.extra}
        wrong = " or ".join(f"type({p}) is not _{_FIELD_TYPES[k].__name__}"
                            for k, p in where.items())
        check = f"    if {wrong}:\n        return None\n" if wrong else ""
        args = ", ".join(_value(name, where.get(name)) for name in _FIELD_NAMES)
        src = f"def build({', '.join(params)}):\n{check}    return _Event({args})\n"
        scope: dict[str, Any] = {"_Event": Event, "_intern": sys.intern, "_int": int,
                                 "_str": str}
        scope.update({f"_d_{name}": v for name, v in _DEFAULTS.items()})
        exec(src, scope)  # the only names spliced in are Event's own fields
        build: _Builder = scope["build"]
        return build


def _value(name: str, param: str | None) -> str:
    """What a builder stores in field NAME: its default, or the record's value; strings
    interned, as a trace repeats a few comms, module names and paths a million times (a
    copy each costs memory and, in a large replay, page faults)."""
    if param is None:
        return f"_d_{name}"
    return f"_intern({param})" if _FIELD_TYPES[name] is str else param


_CTYPES = {"u32": ctypes.c_uint32, "u64": ctypes.c_uint64, "s64": ctypes.c_int64}


class CEvent(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_char * size if ctype == "char" else _CTYPES[ctype])
        for name, ctype, size in LAYOUT
    ]


def c_definitions() -> str:
    """C text for the BPF program: KIND_* constants and struct event."""
    lines = [f"#define KIND_{k.name} {k.value}" for k in Kind]
    lines += [f"#define NAME_LEN {NAME_LEN}", f"#define PATH_LEN {PATH_LEN}"]
    lines.append("struct event {")
    for name, ctype, size in LAYOUT:
        lines.append(f"    char {name}[{size}];" if ctype == "char" else f"    {ctype} {name};")
    lines.append("};")
    return "\n".join(lines) + "\n"


def _record_struct() -> struct.Struct:
    """CEvent's layout as one struct format: its fields at CEvent's own offsets (the C
    compiler's padding is CEvent's), so a record unpacks in one C call."""
    fmt, pos = "<", 0
    for name, ctype, size in LAYOUT:
        offset = getattr(CEvent, name).offset
        fmt += "x" * (offset - pos) + (f"{size}s" if ctype == "char" else _STRUCT[ctype])
        pos = offset + (size if ctype == "char" else ctypes.sizeof(_CTYPES[ctype]))
    fmt += "x" * (ctypes.sizeof(CEvent) - pos)
    return struct.Struct(fmt)


_STRUCT = {"u32": "I", "u64": "Q", "s64": "q"}
RECORD = _record_struct()


def _decoder() -> Callable[[Any], Event]:
    """decode(), generated from LAYOUT: one unpack into locals, each string cut at its NUL
    (as C reads it), a byte that is not UTF-8 kept as a lone surrogate (tracer/text.py),
    then Event positionally (no list, no loop: it runs for every record the recorder
    takes)."""
    names = [f"v{i}" for i in range(len(LAYOUT))]
    # Most kinds leave most strings empty (the first byte is the NUL). The rest are
    # interned: a storm repeats a few comms, formats and names thousands of
    # times, and the requests it holds open each kept their own copies (issue #14: the
    # 10 000-request storm's open stories pinned the allocator's arenas).
    args = ", ".join(f'(_intern({v}.split(b"\\0", 1)[0].decode("utf-8", "surrogateescape")) '
                     f'if {v}[0] else "")'
                     if ctype == "char" else v for v, (_, ctype, _) in zip(names, LAYOUT,
                                                                         strict=True))
    src = (f"def decode(raw):\n"
           f"    if not isinstance(raw, (bytes, bytearray)):\n"
           f"        raw = _string_at(raw, {RECORD.size})\n"
           f"    {', '.join(names)}, = _unpack(raw)\n"
           f"    return _Event({args})\n")
    scope: dict[str, Any] = {"_Event": Event, "_unpack": RECORD.unpack,
                             "_string_at": ctypes.string_at, "_intern": sys.intern}
    exec(src, scope)  # the only names spliced in are generated ones
    fn: Callable[[Any], Event] = scope["decode"]
    fn.__doc__ = "Decode one ring-buffer record (a ctypes pointer or bytes) into an Event."
    return fn


decode = _decoder()
