"""Where a module calls __request_module: the return addresses of its calls, read from
the module's code in the kernel's memory (/proc/kcore), so that req_site's kprobes
(tracer/bpf) are in place before the module runs.

The module:module_load tracepoint fires before the module's init runs, so the kprobes
go in as the module starts, not when the recorder reaches its first request, which a
storm of kernel threads can delay past the throttle's 5 s timeout. A module loaded
where another was before gets kprobes of its own: those of the module gone died with it
(kprobes marks them gone at unload).
"""

from __future__ import annotations

import os
import struct

KCORE = "/proc/kcore"
CALL_REL32 = b"\xe8"  # x86-64 call rel32: e8, then the target less the next instruction
# A direct call lands at the function; where call depth tracking is on (6.2+), at its
# thunk in the padding before it (arch/x86/kernel/callthunks.c patch_dest(): dest less
# the template's size, at most the 16 padding bytes); past its 4-byte endbr64 if the
# call skips it.
BEFORE, AFTER = 16, 4
PT_LOAD, PN_XNUM = 1, 0xFFFF


def call_returns(code: bytes, base: int, target: int) -> list[int]:
    """The return addresses (the instruction after each call) of the calls of TARGET in
    CODE, which lies at BASE. A byte sequence that merely looks like such a call is
    harmless: the kernel refuses a kprobe off an instruction boundary, and req_site
    acts only at the return address its thread's request came from."""
    out = []
    i = code.find(CALL_REL32)
    end = len(code) - 5
    while 0 <= i <= end:
        ret = base + i + 5
        dest = ret + int.from_bytes(code[i + 1:i + 5], "little", signed=True)
        if target - BEFORE <= dest <= target + AFTER:
            out.append(ret)
        i = code.find(CALL_REL32, i + 1)
    return out


class Kcore:
    """The kernel's memory as /proc/kcore's ELF core image maps it: read(addr, size).
    Its segments are fixed when it is opened; vmalloc'd memory (modules) reads as
    zeros where nothing is mapped."""

    def __init__(self, path: str = KCORE) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.segments = self._segments()
        except (OSError, ValueError, struct.error):
            os.close(self.fd)
            raise

    def _segments(self) -> list[tuple[int, int, int]]:
        """(vaddr, size, file offset) of each PT_LOAD."""
        eh = os.pread(self.fd, 64, 0)
        if eh[:4] != b"\x7fELF" or eh[4] != 2:
            raise ValueError("not a 64-bit ELF core")
        phoff, shoff = struct.unpack_from("<QQ", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        if phnum == PN_XNUM:  # too many for e_phnum: section 0's sh_info holds the count
            phnum = struct.unpack_from("<I", os.pread(self.fd, 64, shoff), 44)[0]
        table = os.pread(self.fd, phentsize * phnum, phoff)
        segs = []
        for k in range(phnum):
            p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
                "<IIQQQQ", table, k * phentsize)
            if p_type == PT_LOAD:
                segs.append((vaddr, filesz, offset))
        return segs

    def read(self, addr: int, size: int) -> bytes | None:
        """SIZE bytes at ADDR, None if no one segment holds them all or the read fails."""
        for vaddr, filesz, offset in self.segments:
            if vaddr <= addr and addr + size <= vaddr + filesz:
                try:
                    data = os.pread(self.fd, size, offset + addr - vaddr)
                except OSError:
                    return None
                return data if len(data) == size else None
        return None

    def close(self) -> None:
        os.close(self.fd)
