"""The kernel's BTF, read in Python: struct member offsets, functions, enum values.

No compiler sees the kernel's headers here: the BPF program's struct offsets (-D flags)
and the boot-time probes (tracer/early.py, defined on the kernel command line) take them
from BTF, the running kernel's (/sys/kernel/btf/vmlinux) or, for another installed
kernel, the .BTF section of the vmlinux inside its /boot/vmlinuz (Debian builds every
kernel with CONFIG_DEBUG_INFO_BTF). The format: the kernel's Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Iterator

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# kinds (include/uapi/linux/btf.h) and the bytes after each 12-byte btf_type header:
# per kind, fixed + per member (vlen) size (kinds up to BTF_KIND_ENUM64, 6.0).
_STRUCT, _UNION, _ENUM, _FUNC, _ENUM64 = 4, 5, 6, 12, 19
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}
_QUALIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag


class BTFError(RuntimeError):
    """No BTF where it was looked for, or BTF that lacks what was asked for."""


class BTF:
    """The types of one BTF blob, read in Python (no bpftool, no libbpf): a member's byte
    offset through nested and anonymous structs and unions, the functions, enum values.
    The type section is indexed once (word positions); names are decoded on demand."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data)
        if magic != MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x} (not little-endian BTF)")
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        words = memoryview(data[hdr_len + type_off:hdr_len + type_off + type_len]).cast("I")
        self._words = words
        # Type ids count from 1; _start[id] is the word index of its header.
        starts = [0]
        i, end = 0, len(words)
        extra = _EXTRA
        while i < end:
            starts.append(i)
            info = words[i + 1]
            fixed, per = extra.get((info >> 24) & 0x1F, (0, 0))
            i += 3 + (fixed + per * (info & 0xFFFF)) // 4
        self._start = starts
        self._structs: dict[str, int] | None = None
        self._funcs: set[str] | None = None

    @classmethod
    def from_kernel(cls, path: str = VMLINUX_BTF) -> BTF:
        return load(path)

    def _name(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode("ascii", "replace")

    def _kind(self, tid: int) -> int:
        return (self._words[self._start[tid] + 1] >> 24) & 0x1F

    def _ids(self, kinds: tuple[int, ...]) -> list[int]:
        return [t for t in range(1, len(self._start)) if self._kind(t) in kinds]

    def _struct_ids(self) -> dict[str, int]:
        """Named structs and unions by name (the first definition wins: vmlinux has one)."""
        if self._structs is None:
            found: dict[str, int] = {}
            w = self._words
            for tid in self._ids((_STRUCT, _UNION)):
                i = self._start[tid]
                if w[i] and w[i + 1] & 0xFFFF:
                    found.setdefault(self._name(w[i]), tid)
            self._structs = found
        return self._structs

    def has_function(self, name: str) -> bool:
        """Whether NAME is a function of the kernel's (BTF lists those not inlined)."""
        if self._funcs is None:
            self._funcs = {self._name(self._words[self._start[t]]) for t in self._ids((_FUNC,))}
        return name in self._funcs

    def enum_value(self, name: str) -> int | None:
        w = self._words
        for tid in self._ids((_ENUM, _ENUM64)):
            i = self._start[tid]
            step = 2 if self._kind(tid) == _ENUM else 3
            for m in range(w[i + 1] & 0xFFFF):
                j = i + 3 + step * m
                if self._name(w[j]) == name:
                    v = w[j + 1]
                    return v - (1 << 32) if v >= 1 << 31 and step == 2 else v
        return None

    def _resolve(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type itself."""
        while tid and self._kind(tid) in _QUALIFIERS:
            tid = self._words[self._start[tid] + 2]
        return tid

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type id) of NAME in struct/union TID, searching anonymous
        members too."""
        w = self._words
        i = self._start[tid]
        info = w[i + 1]
        if (info >> 24) & 0x1F not in (_STRUCT, _UNION):
            return None
        bitfields = info >> 31
        for m in range(info & 0xFFFF):
            j = i + 3 + 3 * m
            name_off, mtype, moff = w[j], w[j + 1], w[j + 2]
            if bitfields:
                moff &= 0xFFFFFF
            if name_off == 0:
                inner = self._member(self._resolve(mtype), name)
                if inner is not None:
                    return moff + inner[0], inner[1]
            elif self._name(name_off) == name:
                return moff, mtype
        return None

    def has_field(self, struct_name: str, field: str) -> bool | None:
        tid = self._struct_ids().get(struct_name)
        return None if tid is None else self._member(tid, field) is not None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of PATH ("f_path.dentry") inside struct STRUCT_NAME."""
        tid = self._struct_ids().get(struct_name)
        if tid is None:
            raise BTFError(f"struct {struct_name} is not in the kernel's BTF")
        bits = 0
        for part in path.split("."):
            found = self._member(self._resolve(tid), part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in the kernel's BTF")
            bits += found[0]
            tid = found[1]
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bit field")
        return bits // 8


def _elf_section(elf: bytes, wanted: str) -> bytes:
    """The bytes of section WANTED of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise BTFError("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name, off, size = header(i)
        end = elf.find(b"\0", str_off + name)
        if elf[str_off + name:end].decode("ascii", "replace") == wanted:
            return elf[off:off + size]
    raise BTFError(f"no {wanted} section")


def _decompressors() -> Iterator[tuple[bytes, str]]:
    yield b"\xfd7zXZ\x00", "xz"
    yield b"\x1f\x8b\x08", "gzip"
    yield b"\x28\xb5\x2f\xfd", "zstd"


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(data)
    if kind == "gzip":
        return gzip.decompress(data)
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise BTFError("a zstd-compressed kernel needs the zstandard module") from e
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def vmlinux_from_bzimage(image: bytes) -> bytes:
    """The vmlinux ELF inside an x86 bzImage (boot protocol 2.08+: payload_offset)."""
    if image[0x202:0x206] != b"HdrS":
        raise BTFError("not an x86 bzImage")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    for magic, kind in _decompressors():
        if payload.startswith(magic):
            return _decompress(kind, payload)
    raise BTFError(f"unknown kernel compression (payload starts {payload[:4].hex()})")


def load(path: str = VMLINUX_BTF) -> BTF:
    """BTF of the running kernel (the default), a raw BTF file, or a vmlinuz's."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BTFError(f"cannot read {path}: {e.strerror}") from e
    if data[:2] == struct.pack("<H", MAGIC):
        return BTF(data)
    if data[:4] == b"\x7fELF":
        return BTF(_elf_section(data, ".BTF"))
    return BTF(_elf_section(vmlinux_from_bzimage(data), ".BTF"))
