"""`kmodtrace boot install --bootloader` / `boot cmdline` / `boot uninstall`: the boot-time
tracing words, where they go and how they come out again."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kmodlab import vm
from tracer import bootline, btf, early

KMODTRACE = [sys.executable, "-m", "tracer"]


@pytest.fixture(scope="module")
def stable() -> vm.KernelImage:
    return vm.resolve_kernel("stable", lambda m: None)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODTRACE, *args], capture_output=True, text=True, check=False)


def test_cmdline_for_an_installed_kernel(stable: vm.KernelImage) -> None:
    """`boot cmdline --kernel RELEASE` reads that kernel's BTF out of /boot/vmlinuz-RELEASE."""
    p = run("boot", "cmdline", "--kernel", stable.release)
    assert p.returncode == 0, p.stderr
    want = early.cmdline(btf.load(str(stable.vmlinuz)), "x86_64")
    assert p.stdout.strip() == want
    words = want.split()
    assert words[0].startswith("trace_event=") and "trace_clock=mono" in words
    kprobes = next(w for w in words if w.startswith("kprobe_event="))
    defs = kprobes.removeprefix("kprobe_event=").split(";")
    assert {d.split(",")[0].split("/")[1] for d in defs} == {
        p.name for p in early.probes(btf.load(str(stable.vmlinuz)), "x86_64")}
    assert "$" not in want  # GRUB would expand it
    bad = run("boot", "cmdline", "--kernel", "0.0-no-such")
    assert bad.returncode == 1 and bad.stderr.startswith("kmodtrace: no BTF")
    assert "fix:" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_grub_dropin_round_trip(tmp_path: Path, stable: vm.KernelImage) -> None:
    """install --bootloader writes a drop-in that, sourced the way grub-mkconfig sources it,
    appends exactly the words to GRUB_CMDLINE_LINUX_DEFAULT, `;` quoted for GRUB's script;
    uninstall removes it and nothing else."""
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    p = run("boot", "install", "--root", str(tmp_path), "--bootloader", "--kernel",
            stable.release)
    assert p.returncode == 0, p.stderr
    dropin = tmp_path / bootline.GRUB_DROPIN.lstrip("/")
    assert f"wrote {dropin}" in p.stdout
    sourced = subprocess.run(
        ["sh", "-c", f'. {tmp_path}/etc/default/grub; . {dropin}; '
                     'printf %s "$GRUB_CMDLINE_LINUX_DEFAULT"'],
        capture_output=True, text=True, check=True).stdout
    words = run("boot", "cmdline", "--kernel", stable.release).stdout.split()
    # grub.cfg's linux line gets this text; GRUB drops the single quotes as shlex does
    assert shlex.split(sourced) == ["quiet", *words]
    assert any(w.startswith("'kprobe_event=") for w in sourced.split())
    again = run("boot", "install", "--root", str(tmp_path), "--bootloader", "--kernel",
                stable.release)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == "already installed"
    # the drop-in puts the marker on the next boot's line: the beside unit runs, udev waits
    # for nothing
    assert again.stdout.splitlines()[1].startswith("next boot: kmodtrace-boot-beside.service")
    assert "udev and systemd-modules-load start when they would" in again.stdout
    gone = run("boot", "uninstall", "--root", str(tmp_path))
    assert gone.returncode == 0 and f"removed {dropin}" in gone.stdout
    assert not dropin.exists() and (tmp_path / "etc/default/grub").exists()


def test_without_bootloader_prints_the_line(tmp_path: Path, stable: vm.KernelImage) -> None:
    p = run("boot", "install", "--root", str(tmp_path), "--kernel", stable.release)
    assert p.returncode == 0, p.stderr
    assert "GRUB_CMDLINE_LINUX_DEFAULT" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == run(
        "boot", "cmdline", "--kernel", stable.release).stdout.strip()
    assert not (tmp_path / bootline.GRUB_DROPIN.lstrip("/")).exists()
    # no line on this root: the next boot holds udev, and install says what that costs
    # and how to avoid it
    assert "next boot: kmodtrace-boot.service (no boot-time tracing" in p.stdout
    assert "wait until the tracer has compiled and attached" in p.stdout
    assert "--bootloader" in p.stdout and "boot cmdline" in p.stdout
    st = run("boot", "status", "--root", str(tmp_path))
    assert st.returncode == 0, st.stderr
    assert "kmodtrace-boot-beside.service: installed, enabled" in st.stdout
    assert "next boot: kmodtrace-boot.service" in st.stdout


def test_the_words_fit_their_budget(stable: vm.KernelImage) -> None:
    """With the udev probe the words stay within their share of the command line (the boot
    loader's and the user's words need the rest), and carry the marker word that picks
    the beside unit."""
    line = early.cmdline(btf.load(str(stable.vmlinuz)), "x86_64")
    assert len(line) <= early.CMDLINE_BUDGET < early.CMDLINE_MAX
    assert line.split()[-1] == early.MARKER and early.in_cmdline(line)
    assert ";p:kmt/udev,netlink_broadcast," in line


def test_bootloader_refused_where_there_is_no_grub(tmp_path: Path,
                                                   stable: vm.KernelImage) -> None:
    p = run("boot", "install", "--root", str(tmp_path), "--bootloader", "--kernel",
            stable.release)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("kmodtrace: no /etc/default/grub")
    assert "fix:" in p.stderr
