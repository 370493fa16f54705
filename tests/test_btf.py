"""tracer/btf.py against pahole, which reads the same BTF with libbpf's own parser.

The BTF comes out of the kernels the VM tests boot (Debian's stable 6.1, whose bzImage is
xz-compressed, and the 6.12 backports kernel, zstd): the offsets the boot-time probes
dereference must be what pahole says they are, member by member.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kmodlab import vm
from tracer import btf, early

MEMBERS = [("file", "f_inode"), ("file", "f_path"), ("path", "dentry"), ("dentry", "d_name"),
           ("qstr", "name"), ("inode", "i_ino"), ("inode", "i_sb"), ("inode", "i_size"),
           ("super_block", "s_dev"), ("load_info", "len")]


def _progress(_m: str) -> None:
    pass


@pytest.fixture(scope="module", params=["stable", "backports"])
def kernel_btf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               ) -> tuple[str, btf.BTF, Path]:
    kern = vm.resolve_kernel(request.param, _progress)
    data = kern.vmlinuz.read_bytes()
    raw = btf._elf_section(btf.vmlinux_from_bzimage(data), ".BTF")
    path = tmp_path_factory.mktemp("btf") / f"{kern.release}.btf"
    path.write_bytes(raw)
    return kern.release, btf.load(str(kern.vmlinuz)), path


def pahole_offset(raw: Path, struct: str, member: str) -> int:
    text = subprocess.run(["pahole", "-F", "btf", "-C", struct, str(raw)], capture_output=True,
                          text=True, check=True).stdout
    # "	struct inode *             f_inode;              /*    40     8 */", at any depth
    # (pahole prints a member of an anonymous union at its offset in the named struct)
    m = re.search(rf"[\s*]{member};\s+/\*\s+(\d+)", text)
    assert m, (struct, member, text[:500])
    return int(m[1])


def test_member_offsets_match_pahole(kernel_btf: tuple[str, btf.BTF, Path]) -> None:
    release, b, raw = kernel_btf
    for struct, member in MEMBERS:
        assert b.offset(struct, member) == pahole_offset(raw, struct, member), (release, member)
    assert b.offset("file", "f_path.dentry") == \
        pahole_offset(raw, "file", "f_path") + pahole_offset(raw, "path", "dentry")


def test_functions_and_enums(kernel_btf: tuple[str, btf.BTF, Path]) -> None:
    """What early.py picks from BTF: the file hook by the functions there, READING_MODULE."""
    release, b, raw = kernel_btf
    names = set(subprocess.run(["pfunct", "-F", "btf", str(raw)], capture_output=True,
                               text=True, check=True).stdout.split())
    for fn in ("__request_module", "kernel_read_file", "idempotent_init_module",
               "find_module_all", "do_init_module", "call_usermodehelper_exec_async"):
        assert b.has_function(fn) == (fn in names), (release, fn)
    assert b.enum_value("READING_MODULE") == 2  # include/linux/kernel_read_file.h
    symbol = next(p.symbol for p in early.probes(b, "x86_64") if p.name == "file")
    assert symbol == ("idempotent_init_module" if "idempotent_init_module" in names
                      else "kernel_read_file")


def test_the_boot_line_fits_the_command_line(kernel_btf: tuple[str, btf.BTF, Path]) -> None:
    """x86's COMMAND_LINE_SIZE is 2048 bytes, shared with the boot loader's words: the
    early words stay within their budget on each real kernel (early.CMDLINE_BUDGET, which
    `boot cmdline` enforces), the udev probe included."""
    _, b, _ = kernel_btf
    line = early.cmdline(b, "x86_64")
    assert early.in_cmdline(line) and f"{early.GROUP}/udev,netlink_broadcast," in line
    assert len(line) <= early.CMDLINE_BUDGET < early.CMDLINE_MAX


def test_not_btf(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(btf.BTFError, match="bzImage"):
        btf.load(str(junk))
    with pytest.raises(btf.BTFError, match="cannot read"):
        btf.load(str(tmp_path / "absent"))
