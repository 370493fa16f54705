"""Finding a module's calls of __request_module in its code, and reading that code from
an ELF core image laid out as /proc/kcore is. The real /proc/kcore of Debian 6.1 and
6.12 is read in tests/test_vm.py (the crowd storm's call site, found as it loaded)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tracer.callsites import Kcore, call_returns

REQUEST_MODULE = 0xFFFFFFFF810C5A20  # core kernel text
MODULE = 0xFFFFFFFFC0A00000  # a module, 1 GiB above: its calls' offsets are negative


def call(at: int, dest: int) -> bytes:
    return b"\xe8" + (dest - (at + 5)).to_bytes(4, "little", signed=True)


def test_calls_of_the_function_and_of_its_thunk_are_found() -> None:
    code = bytearray(b"\x90" * 64)
    code[3:6] = b"\x48\x89\xc7"  # mov rdi, rax
    code[6:11] = call(MODULE + 6, REQUEST_MODULE)
    code[20:25] = call(MODULE + 20, REQUEST_MODULE - 16)  # its call-depth thunk
    code[30:35] = call(MODULE + 30, REQUEST_MODULE - 17)  # the function before's end
    code[40:45] = call(MODULE + 40, REQUEST_MODULE + 4)  # past endbr64
    code[50:55] = call(MODULE + 50, REQUEST_MODULE + 5)  # inside it: not a call of it
    assert call_returns(bytes(code), MODULE, REQUEST_MODULE) == [
        MODULE + 11, MODULE + 25, MODULE + 45]


def test_a_call_cut_off_by_the_end_is_not_read_past_it() -> None:
    code = call(MODULE, REQUEST_MODULE) + b"\x90" + call(MODULE + 6, REQUEST_MODULE)[:4]
    assert call_returns(code, MODULE, REQUEST_MODULE) == [MODULE + 5]


def test_an_e8_inside_an_offset_does_not_hide_the_call_after_it() -> None:
    first = call(MODULE, MODULE + 0x10ED)  # an unrelated call whose offset holds e8
    assert b"\xe8" in first[1:]
    code = first + call(MODULE + 5, REQUEST_MODULE)
    assert call_returns(code, MODULE, REQUEST_MODULE) == [MODULE + 10]


def test_a_call_right_after_an_e8_that_is_not_one_is_found() -> None:
    """mov eax, 0xe8332211 ends in e8: the scan steps one byte, not a call's five,
    past what only looked like a call, or it would step over the call that follows."""
    mov = b"\xb8\x11\x22\x33\xe8"
    code = mov + call(MODULE + 5, REQUEST_MODULE)
    assert call_returns(code, MODULE, REQUEST_MODULE) == [MODULE + 10]


def test_nothing_in_code_without_calls() -> None:
    assert call_returns(b"", MODULE, REQUEST_MODULE) == []
    assert call_returns(b"\xe8\x00\x00", MODULE, REQUEST_MODULE) == []


def elf_core(path: Path, segments: list[tuple[int, int, bytes]], xnum: bool = False) -> None:
    """An ELF64 core: a note, then a PT_LOAD per (type 1) segment at its vaddr.
    XNUM: e_phnum is PN_XNUM and section 0's sh_info holds the count, as a kernel
    with more segments than e_phnum holds writes it."""
    phdrs = [(4, 0, b""), *segments]  # PT_NOTE first, as kcore has
    phoff, phentsize = 64, 56
    shoff = phoff + phentsize * len(phdrs)
    data_at = shoff + 64
    table, blobs = b"", b""
    for p_type, vaddr, blob in phdrs:
        table += struct.pack("<IIQQQQQQ", p_type, 7, data_at + len(blobs), vaddr, 0,
                             len(blob), len(blob), 4096)
        blobs += blob
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, shoff if xnum else 0, 0,
                          64, phentsize, 0xFFFF if xnum else len(phdrs), 64,
                          1 if xnum else 0, 0)
    section0 = bytes(44) + struct.pack("<I", len(phdrs)) + bytes(16)
    path.write_bytes(header + table + section0 + blobs)


@pytest.mark.parametrize("xnum", [False, True])
def test_kernel_memory_is_read_from_the_segment_that_maps_it(tmp_path: Path,
                                                              xnum: bool) -> None:
    text = bytes(range(256)) * 4
    modules = b"\x90" * 100 + call(MODULE + 100, REQUEST_MODULE) + b"\xcc" * 27
    core = tmp_path / "kcore"
    elf_core(core, [(1, REQUEST_MODULE - 0x20, text), (1, MODULE, modules)], xnum)
    kcore = Kcore(str(core))
    try:
        assert kcore.read(REQUEST_MODULE - 0x20, 8) == text[:8]
        assert kcore.read(MODULE + 100, 5) == modules[100:105]
        got = kcore.read(MODULE, len(modules))
        assert got is not None and call_returns(got, MODULE, REQUEST_MODULE) == [MODULE + 105]
        assert kcore.read(MODULE + len(modules) - 4, 8) is None  # runs past its segment
        assert kcore.read(MODULE - 0x1000, 16) is None  # no segment maps it
    finally:
        kcore.close()


def test_a_file_that_is_not_an_elf_core_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "kcore"
    bad.write_bytes(b"MZ" + bytes(100))
    with pytest.raises(ValueError):
        Kcore(str(bad))
    with pytest.raises(OSError):
        Kcore(str(tmp_path / "absent"))
