"""Attaching without kernel headers: struct offsets from the kernel's BTF, bcc compiling
in tracer/bpf/nohdr. The VM runs of test_vm.py (Debian 6.1 and 6.12) trace with
/lib/modules/RELEASE/build hidden, so each of their witness checks is a check of this
build; the tests here prove the headers really were hidden and BTF was used."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import VMRun
from tracer import btf, kernel
from tracer.errors import TracerError
from tracer.probes import RESCUE_HOOK, Tracer


@pytest.mark.vm
def test_live_attached_with_the_headers_hidden(vm_run: VMRun) -> None:
    assert vm_run.manifest["headers_hidden"] is True
    assert vm_run.manifest["tracer_rc"] == 0
    log = (vm_run.out / "live.log").read_text()
    assert "btf build)" in log, log[-2000:]
    # and the probes that read struct members through BTF offsets read real values:
    # modprobe's path and argv (subprocess_info), the loaded file's name and inode
    assert vm_run.trace.header["hooks"]
    reqs = [e for e in vm_run.trace.events if e.kind == 4]  # UMH_ENTER
    assert reqs and all(e.path.endswith("modprobe") for e in reqs)
    finit = [e for e in vm_run.trace.events if e.kind == 8]  # FINIT_ENTER
    assert finit and all(e.path.endswith((".ko", ".ko.xz", ".ko.zst")) and e.ino and e.dev
                         for e in finit)
    assert all(e.ppid for e in vm_run.trace.events if e.kind == 1)  # REQ_ENTER
    # the fexit that sees requests time out in the kmod throttle semaphore attached too
    # (its address from kallsyms, its types from BTF); 6.1's wait queue (kmod_wq) gets
    # none: its timeout is schedule_timeout()'s return, which every CPU runs constantly
    hooks = vm_run.trace.header["hooks"]
    if vm_run.manifest["kmod_wq"]:
        assert not [h for h in hooks if "schedule_timeout" in h], hooks
    else:
        assert f"kretfunc:{RESCUE_HOOK.target}" in hooks, hooks


def test_btf_offsets_of_this_machine() -> None:
    """The Python BTF reader on the host's own /sys/kernel/btf/vmlinux: members at
    fixed places, one inside an anonymous union, one through a nested struct."""
    b = btf.load()
    assert b.offset("list_head", "prev") == 8
    assert b.offset("qstr", "name") == 8  # after union { struct { hash, len }; hash_len }
    assert b.offset("qstr", "hash_len") == 0  # a member of the anonymous union
    assert b.offset("file", "f_path.dentry") == b.offset("file", "f_path") + \
        b.offset("path", "dentry")
    assert b.has_field("task_struct", "tgid") is True
    assert b.has_field("task_struct", "no_such_member") is False
    assert b.has_field("no_such_struct_kmt", "x") is None
    with pytest.raises(btf.BTFError, match="no member"):
        b.offset("task_struct", "no_such_member")


def test_no_headers_and_no_btf_names_both_fixes(tmp_path: Path) -> None:
    """A release with no headers installed and a BTF file that is not there."""
    with pytest.raises(TracerError) as e:
        Tracer._build_flags("0.0.0-kmt-none", btf_path=f"{tmp_path}/vmlinux")
    msg = str(e.value)
    assert "install linux-headers-0.0.0-kmt-none" in msg
    assert "CONFIG_DEBUG_INFO_BTF=y" in msg and "/sys/kernel/btf/vmlinux" in msg


def test_version_code() -> None:
    assert kernel.version_code("6.1.0-56-amd64") == 0x060100
    assert kernel.version_code("6.12.95+deb12-amd64") == 0x060C5F
    assert kernel.version_code("5.4.300") == 0x0504FF
