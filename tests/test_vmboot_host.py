"""The host side of `kmodtrace vm --boot`, without a VM: the unit copy, the command line, the
figures taken from systemd's timestamps."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

from kmodlab import vm, vmboot
from tracer import boot, btf, early


def test_the_guest_gets_what_boot_install_writes(tmp_path: Path) -> None:
    etc = vmboot.prepare_unit_dir(True, lambda m: None, base=tmp_path / "unit")
    assert etc == tmp_path / "unit" / "etc/systemd/system"
    assert (etc / boot.UNIT_NAME).read_text() == boot.unit_text()
    link = etc / f"{boot.WANTED_BY}.wants" / boot.UNIT_NAME
    assert os.readlink(link) == f"{boot.UNIT_DIR}/{boot.UNIT_NAME}"
    bare = vmboot.prepare_unit_dir(False, lambda m: None, base=tmp_path / "bare")
    assert not (bare / boot.UNIT_NAME).exists()
    assert not (bare / f"{boot.WANTED_BY}.wants" / boot.UNIT_NAME).is_symlink()


def test_namespace_prefix(tmp_path: Path) -> None:
    pre = vmboot.namespace_prefix(Path("/cache/unit/etc/systemd/system"),
                                  [Path("/out"), Path("/cache")], tmp_path / "ns")
    assert pre[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert pre[-10:] == [str(tmp_path / "ns"), "/cache/unit/etc/systemd/system",
                         str(tmp_path / "virtme-ng.conf"), str(tmp_path / "fstab"),
                         str(tmp_path / "collect"), str(tmp_path / "modules-load.conf"),
                         str(tmp_path / "modprobe.conf"), "/out", "/cache", "--"]
    assert (tmp_path / "ns").is_dir()
    assert " /var/log tmpfs " in (tmp_path / "fstab").read_text()
    assert (tmp_path / "modules-load.conf").read_text() == ""  # no advice: no file
    assert (tmp_path / "modprobe.conf").read_text() == ""


def test_advice_applied_to_a_boot(tmp_path: Path) -> None:
    """A blacklist in modprobe.d (not on the kernel command line, which has no room left
    in the lab), the preload in modules-load.d, and systemd-modules-load ordered before
    udev's coldplug trigger."""
    applied = vmboot.Applied(("acpi_cpufreq", "amd64_edac"), ("kvm_amd", "aesni_intel"),
                             "/b/boot-1.jsonl")
    assert applied.modprobe_conf() == ("# kmodtrace: blacklisted on the advice of "
                                       "/b/boot-1.jsonl\nblacklist acpi_cpufreq\n"
                                       "blacklist amd64_edac\n")
    assert applied.modules_load() == ("# kmodtrace: preloaded on the advice of "
                                      "/b/boot-1.jsonl\nkvm_amd\naesni_intel\n")
    vmboot.apply_to_units(applied, tmp_path)
    dropin = (tmp_path / vmboot.ORDER_DROPIN).read_text()
    assert "[Unit]\nBefore=systemd-udev-trigger.service\n" in dropin
    assert vmboot.Applied().modprobe_conf() == "" and vmboot.Applied().modules_load() == ""
    vmboot.apply_to_units(vmboot.Applied(), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_advice_of_a_recorded_boot(tmp_path: Path) -> None:
    """vm --boot --advice-from: what the advice of a trace turns into."""
    trace = Path(__file__).parent / "data" / "vm-6.1-udev" / "trace.jsonl"
    said: list[str] = []
    applied = vmboot.advice_from(str(trace), said.append)
    assert applied.blacklist[:1] == ("acpi_cpufreq",) and applied.preload == ()
    assert said[-1].startswith(f"advice of {trace}: blacklist acpi_cpufreq ")


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_namespace_hides_dockerenv_and_shows_the_units(tmp_path: Path) -> None:
    """Run the real prefix with a probe instead of vng: the chrooted root has the unit
    copy at /etc/systemd/system, no /.dockerenv, and the shared directory writable."""
    import subprocess

    units = vmboot.prepare_unit_dir(True, lambda m: None, base=tmp_path / "unit")
    shared = tmp_path / "shared"
    shared.mkdir()
    probe = (f"test ! -e /.dockerenv && test -e /etc/systemd/system/{boot.UNIT_NAME} "
             f"&& test -s $HOME/.config/virtme-ng/virtme-ng.conf "
             f"&& test -s {vmboot.GUEST_FSTAB_PATH} && test -x {vmboot.COLLECT_PATH} "
             f"&& grep -qx event_timeout={vmboot.UDEV_EVENT_TIMEOUT_S} /etc/udev/udev.conf "
             f"&& touch {shared}/written")
    pre = vmboot.namespace_prefix(units, [shared], tmp_path / "ns",
                                  vmboot.collect_script(shared, unit=True), "kvm_amd\n",
                                  "blacklist acpi_cpufreq\n")
    probe += (" && test \"$(cat /etc/modules-load.d/kmodtrace-advice.conf)\" = kvm_amd"
              " && test \"$(cat /etc/modprobe.d/kmodtrace-advice.conf)\" = "
              f"'blacklist acpi_cpufreq' && touch {shared}/preloaded")
    p = subprocess.run([*pre, "sh", "-c", probe], capture_output=True, text=True, check=False)
    if p.returncode != 0 and "unshare failed" in p.stderr:
        pytest.skip(f"no mount namespaces here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    assert (shared / "written").exists() and (shared / "preloaded").exists()


def test_kernel_command_line() -> None:
    """Without the unit: the witness's events; the collector by a short script path."""
    args = [shlex.split(a)[0] for a in vmboot.boot_append(None)]
    assert "trace_clock=mono" in args
    assert any(a.startswith("trace_event=") and "syscalls:sys_exit_finit_module" in a
               for a in args)
    assert f"systemd.run={vmboot.COLLECT_PATH}" in args
    assert "systemd.run_success_action=none" in args
    script = vmboot.collect_script(Path("/tmp/out"), unit=False)
    assert script.startswith("#!/bin/sh\nexec systemd-run --no-block ")
    assert script.rstrip().endswith("--boot-collect --mount-out --no-unit")
    with pytest.raises(vm.VMError):
        vmboot.collect_script(Path("/tmp/with blank"), unit=True)


def test_kernel_command_line_with_the_unit() -> None:
    """With the unit: the words `kmodtrace boot cmdline --buffer-kb WITNESS_BUF_KB` prints
    for the guest's kernel (a buffer big enough for the witness), each one word for vng
    (which shlex-splits), the marker among them: the boot runs the beside unit."""
    line = early.cmdline(btf.load(str(vm.stable_kernel(lambda m: None).vmlinuz)), "x86_64",
                         buffer_kb=vmboot.WITNESS_BUF_KB)
    args = [shlex.split(a) for a in vmboot.boot_append(line)]
    assert all(len(a) == 1 for a in args)
    words = [a[0] for a in args]
    assert words[:len(line.split())] == line.split()
    assert f"trace_buf_size={vmboot.WITNESS_BUF_KB}K" in words
    assert boot.unit_for_cmdline(" ".join(words)) == boot.BESIDE_UNIT
    assert boot.unit_for_cmdline(" ".join(shlex.split(a)[0]
                                          for a in vmboot.boot_append(None))) == boot.UNIT_NAME


def test_the_guest_command_line_fits() -> None:
    """The whole kernel command line of a 16-vCPU `vm --boot` with the unit (virtme-ng's
    words, the boot-time tracing words, the collector's) as vng hands it to QEMU, for an
    output directory with a path as long as pytest's: within the kernel's 2047 bytes."""
    import subprocess
    import sys

    kern = vm.stable_kernel(lambda m: None)
    line = early.cmdline(btf.load(str(kern.vmlinuz)), "x86_64", buffer_kb=vmboot.WITNESS_BUF_KB)
    # as long as pytest's /tmp/pytest-of-root/pytest-NNNN/vmboot16-0, not tmp_path's
    base = Path(tempfile.mkdtemp(prefix="kmt-", dir="/tmp"))
    out = base / ("v" * (44 - len(str(base)) - 1))
    out.mkdir()
    cache = vm.cache_dir()
    cmd = [str(vm.vng_path()), "--run", str(kern.vmlinuz), "--disable-kvm", "--systemd",
           "--cpus", "16", "--memory", "4G", "--rwdir", str(out), "--rwdir", str(cache),
           "--cwd", str(out), "--exec", vmboot.COLLECT_PATH, "--dry-run"]
    for a in vmboot.boot_append(line):
        cmd += ["--append", a]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    text = p.stdout + p.stderr
    assert " -append " in text, text[-2000:]
    quoted = text.split(" -append ", 1)[1].split(" -initrd ", 1)[0]
    kernel_line = shlex.split(quoted)[0]
    assert "kmodtrace.early" in kernel_line.split()
    assert len(kernel_line) <= early.CMDLINE_MAX, len(kernel_line)
    print(f"guest command line: {len(kernel_line)} bytes, boot-time tracing {len(line)}")
    shutil.rmtree(base)


def _props(**kw: int) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items()}


def test_summary_from_systemd_timestamps() -> None:
    stats = {
        "unit_installed": True,
        "manager": _props(UserspaceTimestampMonotonic=5_000_000,
                          FinishTimestampMonotonic=95_000_000),
        "units": {
            boot.UNIT_NAME: _props(ExecMainStartTimestampMonotonic=7_000_000,
                                   ActiveEnterTimestampMonotonic=67_500_000),
            "systemd-udevd.service": _props(ExecMainStartTimestampMonotonic=68_000_000),
            "systemd-udev-trigger.service": _props(ExecMainStartTimestampMonotonic=68_500_000),
        },
    }
    s = vmboot.summarize(stats)
    assert s["ready_s"] == pytest.approx(60.5) and s["unit_start_s"] == pytest.approx(2.0)
    assert s["udevd_s"] == pytest.approx(63.0) and s["udevd_kernel_s"] == pytest.approx(68.0)
    assert s["trigger_s"] == pytest.approx(63.5) and s["boot_finished_s"] == pytest.approx(90.0)
    assert s["ready_before_udevd"] is True
    assert any("start -> READY 60.5s" in line for line in vmboot.summary_lines(s))
    bare = vmboot.summarize({"units": {"systemd-udevd.service": _props(
        ExecMainStartTimestampMonotonic=9_000_000)}, "manager": _props(
        UserspaceTimestampMonotonic=5_000_000)})
    assert "ready_s" not in bare and bare["udevd_s"] == pytest.approx(4.0)


def test_summary_of_a_boot_in_beside_mode() -> None:
    """The beside unit ran (the holding one was skipped: no start): its start -> READY, and
    whether udev and the coldplug trigger started before READY, from systemd's timestamps."""
    beside = _props(ExecMainStartTimestampMonotonic=7_000_000,
                    ActiveEnterTimestampMonotonic=97_000_000)
    stats = {
        "unit_installed": True,
        "manager": _props(UserspaceTimestampMonotonic=5_000_000),
        "units": {
            boot.UNIT_NAME: _props(ExecMainStartTimestampMonotonic=0),
            boot.BESIDE_UNIT: beside,
            "systemd-udevd.service": _props(ExecMainStartTimestampMonotonic=9_000_000),
            "systemd-udev-trigger.service": _props(ExecMainStartTimestampMonotonic=12_000_000),
        },
    }
    s = vmboot.summarize(stats)
    assert s["unit_name"] == boot.BESIDE_UNIT and s["ready_s"] == pytest.approx(90.0)
    assert s["udev_started_before_ready"] is True and s["ready_before_udevd"] is False
    assert any(line.startswith(f"{boot.BESIDE_UNIT}: start -> READY 90.0s")
               for line in vmboot.summary_lines(s))
    beside["ActiveEnterTimestampMonotonic"] = "10000000"
    assert vmboot.summarize(stats)["udev_started_before_ready"] is False  # trigger after


def test_an_installed_kernel_is_taken_by_its_file() -> None:
    """`vm --boot -k /boot/vmlinuz-REL`: a kernel installed in / is no cache tree (whose
    modules the guest would link in; --boot refuses those), whatever layout it has."""
    installed = sorted(Path("/boot").glob("vmlinuz-*"))
    assert installed, "the stable kernel is installed by the test bootstrap"
    kern = vm.resolve_kernel(str(installed[-1]), lambda m: None)
    assert (kern.release, kern.vmlinuz, kern.root) == (
        installed[-1].name.removeprefix("vmlinuz-"), installed[-1], None)


@pytest.mark.parametrize("layout", ["boot/vmlinuz-7.3.4+deb13-amd64",
                                    "usr/lib/modules/7.3.4+deb13-amd64/vmlinuz"])
def test_a_kernel_tree_of_its_own_keeps_its_root(tmp_path: Path, layout: str) -> None:
    (tmp_path / "usr" / "lib" / "modules" / "7.3.4+deb13-amd64").mkdir(parents=True)
    f = tmp_path / layout
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"MZ")
    kern = vm.resolve_kernel(str(f), lambda m: None)
    assert (kern.release, kern.vmlinuz, kern.root) == ("7.3.4+deb13-amd64", f, tmp_path)


@pytest.mark.parametrize(("name", "error"), [
    ("bzImage", "expected a file named vmlinuz-RELEASE, or lib/modules/RELEASE/vmlinuz"),
    ("vmlinuz", "expected a file named vmlinuz-RELEASE, or lib/modules/RELEASE/vmlinuz"),
])  # fmt: skip
def test_a_kernel_file_of_no_known_name_is_refused(tmp_path: Path, name: str,
                                                   error: str) -> None:  # fmt: skip
    (tmp_path / name).write_bytes(b"MZ")
    with pytest.raises(vm.VMError, match=error):
        vm.resolve_kernel(str(tmp_path / name), lambda m: None)
