"""Every failure path the CLI can reach ends in one `kmodtrace: ...` line: cause and fix.

Each test feeds a real bad input (a file, a link, a failing program on PATH, an
unprivileged user) to the real command and asserts on the line it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kmodlab import oracle, vm
from tests.schema_check import check_report

ROOT = Path(__file__).parent.parent
TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"
DEBUG_HINT = "(run with KMODTRACE_DEBUG=1 for the traceback)"
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def kmodtrace(*args: str, env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "tracer", *args],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
                          env=env)


def one_line(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The error line of a failed command: its whole stderr."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and len(lines) == 1, (p.returncode, p.stderr)
    assert lines[0].startswith("kmodtrace: "), lines
    return lines[0]


def last_line(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The error line of a failed command that printed progress before it."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and lines, (p.returncode, p.stderr)
    assert lines[-1].startswith("kmodtrace: "), lines
    assert not any(ln.startswith("kmodtrace: ") for ln in lines[:-1]), lines
    return lines[-1]


# --- report: files that are not traces --------------------------------------------------


def _bad_input(tmp_path: Path, what: str) -> Path:
    p = tmp_path / "t.jsonl"
    if what == "directory":
        p.mkdir()
    elif what == "empty":
        p.write_text("")
    elif what == "binary":
        p.write_bytes(bytes(range(256)) * 16)
    elif what == "json-not-a-trace":
        p.write_text(json.dumps({"traceEvents": []}) + "\n")
    elif what == "newer-format":
        p.write_text(json.dumps({"type": "header", "format": "kmodtrace-trace",
                                 "version": 99}) + "\n")
    return p


@pytest.mark.parametrize(("what", "says"), [
    ("missing", "no such file: give a file written by `kmodtrace record -o FILE`"),
    ("directory", "is a directory, not a trace: give a file written by `kmodtrace record"),
    ("empty", "empty file: not a kmodtrace trace (give a file written by"),
    ("binary", "line 1 is not JSON: not a kmodtrace trace (give a file written by"),
    ("json-not-a-trace", "no kmodtrace header: not a kmodtrace trace (give a file written by"),
    ("newer-format", "trace format version 99, this kmodtrace reads 1: report it with the "
                     "kmodtrace that recorded it"),
])
def test_report_of_a_bad_file(tmp_path: Path, what: str, says: str) -> None:
    p = _bad_input(tmp_path, what)
    for args in (["report"], ["report", "--json"]):
        line = one_line(kmodtrace(*args, str(p)))
        assert line.startswith(f"kmodtrace: {p}") and says in line, line


def test_a_corrupt_line_in_the_middle_is_named_and_the_report_goes_on(tmp_path: Path) -> None:
    lines = TRACE.read_text().splitlines()
    lines.insert(300, '{"k": "nope"}')  # an object with no type
    lines.insert(500, '{"type": "event", "ts_ns": 5}')  # an event with no kind
    bad = tmp_path / "t.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    p = kmodtrace("report", str(bad))
    assert p.returncode == 0, p.stderr
    assert "2 unreadable line(s), first at line 301" in p.stdout
    doc = check_report(json.loads(kmodtrace("report", "--json", str(bad)).stdout))
    assert doc["first_bad_line"] == 301 and doc["bad_lines"] == 2 and doc["complete"]
    good = check_report(json.loads(kmodtrace("report", "--json", str(TRACE)).stdout))
    assert len(doc["requests"]) == len(good["requests"])  # nothing else was lost


def test_a_damaged_trailer_still_reports(tmp_path: Path) -> None:
    lines = TRACE.read_text().splitlines()
    trailer = json.loads(lines[-1])
    trailer["ksyms"] = {"not-hex": "x", "0x10": 5, **trailer.get("ksyms", {})}
    bad = tmp_path / "t.jsonl"
    bad.write_text("\n".join([*lines[:-1], json.dumps(trailer)]) + "\n")
    p = kmodtrace("report", "--json", str(bad))
    assert p.returncode == 0, p.stderr


def test_report_outputs_that_cannot_be_written(tmp_path: Path) -> None:
    line = one_line(kmodtrace("report", "--plot", str(tmp_path / "t.pdf"), str(TRACE)))
    assert "unsupported image format '.pdf': use one of .png, .svg" in line
    out = tmp_path / "no-such-dir" / "t.json"
    line = one_line(kmodtrace("report", "--perfetto", str(out), str(TRACE)))
    assert line == (f"kmodtrace: cannot write the Perfetto trace to {out}: "
                    "No such file or directory")


# --- live and record -------------------------------------------------------------------


def test_live_as_non_root_says_so() -> None:
    if os.geteuid() != 0:
        p = kmodtrace("live", "-d", "1")
    else:
        p = kmodtrace("live", "-d", "1", prefix=AS_NOBODY)
    assert one_line(p) == "kmodtrace: kmodtrace must run as root (it loads BPF programs)"


@pytest.mark.parametrize("cmd", ["live", "record"])
def test_output_through_a_symlink_is_refused(tmp_path: Path, cmd: str) -> None:
    """Checked before attaching (so it shows here, where nothing can attach), and again by
    O_NOFOLLOW when the file is opened."""
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "trace.jsonl"
    link.symlink_to(target)
    line = one_line(kmodtrace(cmd, "-d", "1", "-o", str(link)))
    assert line == (f"kmodtrace: {link} is a symbolic link: a trace is never written through "
                    "one (remove the link or choose another output path)")
    assert target.read_text() == "root:x:0:0\n"


def test_usage_errors_are_one_line() -> None:
    line = one_line(kmodtrace("record"), code=2)
    assert "Missing option '-o' / '--output'" in line and "(see `kmodtrace record --help`)" in line
    line = one_line(kmodtrace("live", "--no-such-flag"), code=2)
    assert "No such option '--no-such-flag'" in line and "kmodtrace live --help" in line


def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path: Path) -> None:
    """The last-resort handler, around a real command that fails in a way nobody planned."""
    script = tmp_path / "boom.py"
    script.write_text(
        "from tracer.cli import main\n\n\n"
        "@main.command()\n"
        "def boom() -> None:\n"
        "    {}['missing']\n\n\n"
        "main()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("KMODTRACE_DEBUG", None)
    p = subprocess.run([sys.executable, str(script), "boom"], capture_output=True, text=True,
                       check=False, env=env)
    assert one_line(p) == f"kmodtrace: unexpected error: KeyError: 'missing' {DEBUG_HINT}"
    p = subprocess.run([sys.executable, str(script), "boom"], capture_output=True, text=True,
                       check=False, env=dict(env, KMODTRACE_DEBUG="1"))
    assert p.returncode == 1 and "Traceback" in p.stderr and "KeyError" in p.stderr


# --- boot ----------------------------------------------------------------------------------


def test_boot_uninstall_with_a_foreign_file_in_the_way(tmp_path: Path) -> None:
    unit = tmp_path / "etc/systemd/system/kmodtrace-boot.service"
    unit.mkdir(parents=True)
    (unit / "someone-elses").write_text("x\n")
    line = one_line(kmodtrace("boot", "uninstall", "--root", str(tmp_path)))
    assert line == (f"kmodtrace: {unit} is a directory, not what install wrote; not touching "
                    "it (fix: move it away if it is not yours, then uninstall again)")
    assert (unit / "someone-elses").exists()


def test_boot_install_with_a_foreign_file_in_the_way(tmp_path: Path) -> None:
    link = tmp_path / "etc/systemd/system/sysinit.target.wants/kmodtrace-boot.service"
    link.parent.mkdir(parents=True)
    link.write_text("mine\n")
    line = one_line(kmodtrace("boot", "install", "--root", str(tmp_path)))
    assert f"{link} exists and is not a symlink; not touching it" in line
    assert link.read_text() == "mine\n"


def test_boot_install_of_a_tracer_others_can_change(tmp_path: Path) -> None:
    """The package the boot command would import lies in a group-writable directory."""
    pkgs = tmp_path / "pkgs"
    shutil.copytree(ROOT / "tracer", pkgs / "tracer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.chmod(pkgs, 0o775)
    env = dict(os.environ, PYTHONPATH=str(pkgs))
    p = subprocess.run([sys.executable, "-m", "tracer", "boot", "install", "--root",
                        str(tmp_path / "root")], capture_output=True, text=True, check=False,
                       env=env, cwd=tmp_path)
    line = one_line(p)
    assert line.startswith(f"kmodtrace: refusing to install: the boot tracer package "
                           f"{pkgs / 'tracer' / '__init__.py'} is not root's alone: {pkgs} is "
                           "writable by its group (mode 775)")
    assert "fix: chown root and chmod go-w it" in line
    assert not (tmp_path / "root").exists()


# --- the lab: a missing kernel, apt failing ----------------------------------------------


def test_vm_with_a_missing_kernel() -> None:
    line = one_line(kmodtrace("vm", "-k", "/nonexistent/vmlinuz-x"))
    assert line == ("kmodtrace: kernel /nonexistent/vmlinuz-x: no such file (give an existing "
                    "vmlinuz-RELEASE, or -k stable / -k backports)")


@pytest.fixture
def failing_apt(tmp_path: Path) -> Path:
    """A directory whose apt-get and apt-cache are real programs that fail as apt does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "apt-cache"):
        prog = bin_dir / name
        prog.write_text("#!/bin/sh\n"
                        "echo 'E: Could not open lock file /var/lib/dpkg/lock-frontend' >&2\n"
                        "exit 100\n")
        prog.chmod(0o755)
    return bin_dir


def test_oracle_apt_step_fails_in_one_line(failing_apt: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{failing_apt}:{os.environ['PATH']}")
    monkeypatch.setattr(oracle, "BUILD_DEPS", ["kmodtrace-no-such-package"])
    with pytest.raises(vm.VMError) as e:
        oracle.install_build_deps(lambda _m: None)
    assert str(e.value) == (
        "installing build dependencies: kmodtrace-no-such-package failed (exit 100): "
        "E: Could not open lock file /var/lib/dpkg/lock-frontend (fix: check the network "
        "and the Debian mirror in /etc/apt, and run as root)")


def test_parity_build_only_when_apt_fails(failing_apt: Path, tmp_path: Path) -> None:
    """What printed a 30-line CalledProcessError traceback: now one line at the end."""
    env = dict(os.environ, PATH=f"{failing_apt}:{os.environ['PATH']}",
               KMODTRACE_CACHE=str(tmp_path / "cache"))
    line = last_line(kmodtrace("parity", "--build-only", env=env))
    assert "failed (exit 100): E: Could not open lock file" in line or "Debian mirror" in line
    assert "(fix: check the network and the Debian mirror in /etc/apt" in line or \
        "no Debian mirror found in /etc/apt" in line


def test_a_missing_program_is_named(tmp_path: Path) -> None:
    with pytest.raises(vm.VMError, match="kmodtrace-no-such-tool is not installed"):
        vm.run_step(["kmodtrace-no-such-tool"], None, "testing")


def test_trust_check_sees_real_modes(tmp_path: Path) -> None:
    """The same check install runs, on a plain executable (details in test_boot)."""
    exe = tmp_path / "kmodtrace"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    from tracer import boot

    boot.check_trusted([str(exe)])
    exe.chmod(exe.stat().st_mode | stat.S_IWOTH)
    with pytest.raises(boot.BootError, match="is writable by others"):
        boot.check_trusted([str(exe)])


def test_record_around_a_missing_command(tmp_path: Path) -> None:
    """Found before attaching: the trace file is not even created."""
    line = one_line(kmodtrace("record", "-o", str(tmp_path / "t.jsonl"), "--",
                              "kmodtrace-no-such-command"))
    assert line == ("kmodtrace: cannot run kmodtrace-no-such-command: no such command (give a "
                    "program on PATH, or its path, after --)")
    assert not (tmp_path / "t.jsonl").exists()


def test_parity_of_a_directory_without_results(tmp_path: Path) -> None:
    line = one_line(kmodtrace("parity", "--trace-dir", str(tmp_path)))
    assert line.startswith(f"kmodtrace: {tmp_path / 'trace.jsonl'}: no such file")
    assert line.endswith(f"is {tmp_path} the results directory of an oracle run?")


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "4097", "8 "])
def test_a_bad_kretprobe_instance_count_says_what_is_allowed(
        raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.errors import TracerError
    from tracer.probes import env_maxactive

    monkeypatch.setenv("KMODTRACE_MAXACTIVE", raw)
    with pytest.raises(TracerError, match=r"KMODTRACE_MAXACTIVE=.* \(fix: 1 to 4096"):
        env_maxactive()


def test_kretprobe_instances_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.probes import DEFAULT_MAXACTIVE, env_maxactive

    monkeypatch.delenv("KMODTRACE_MAXACTIVE", raising=False)
    assert env_maxactive() == DEFAULT_MAXACTIVE == 4096
    monkeypatch.setenv("KMODTRACE_MAXACTIVE", "8")
    assert env_maxactive() == 8


@pytest.mark.parametrize("raw", ["no", "2", "true", " 0"])
def test_a_bad_trampoline_switch_says_what_is_allowed(
        raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.errors import TracerError
    from tracer.probes import env_trampolines

    monkeypatch.setenv("KMODTRACE_TRAMPOLINES", raw)
    with pytest.raises(TracerError, match=r"KMODTRACE_TRAMPOLINES=.* \(fix: 0 for the "):
        env_trampolines()


def test_trampolines_unless_the_environment_says_0(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.probes import env_trampolines

    monkeypatch.delenv("KMODTRACE_TRAMPOLINES", raising=False)
    assert env_trampolines() is True
    monkeypatch.setenv("KMODTRACE_TRAMPOLINES", "1")
    assert env_trampolines() is True
    monkeypatch.setenv("KMODTRACE_TRAMPOLINES", "0")
    assert env_trampolines() is False
