"""kmodtrace installs like any Python tool: a wheel built from this checkout, installed into
a fresh venv (made with --system-site-packages, so Debian's bcc is seen), works from
anywhere without the checkout: the BPF source and the lab's data are package data, the
lab's commands come through its entry points.

One build and one venv for the module (about a minute: pip installs requirements.lock).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests" / "data" / "vm-6.1" / "trace.jsonl"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, whose dist-packages hold bcc

pytestmark = pytest.mark.wheel


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path  # a directory outside the checkout, the commands' cwd
    env: dict[str, str]  # no PYTHONPATH, nothing pointing into the checkout

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(list(argv), cwd=self.work, env=self.env, capture_output=True,
                           text=True, timeout=timeout, check=False)
        assert p.returncode == 0, f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p

    def kmodtrace(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "kmodtrace"), *args)

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code).stdout


def _pip(*args: str, cwd: Path) -> None:
    p = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600,
                       check=False)
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    dist = tmp / "dist"
    # the checkout's venv has setuptools (the build backend); no isolation: no download
    _pip(str(ROOT / ".venv" / "bin" / "pip"), "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(dist), str(src), cwd=tmp)
    wheels = list(dist.glob("kmodtrace-*.whl"))
    assert len(wheels) == 1, wheels
    shutil.rmtree(src)
    venv = tmp / "venv"
    _pip(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv), cwd=tmp)
    # Its dependencies come from the lock, as everything the project installs does; the
    # wheel itself goes in offline, so a dependency the lock lacks fails here.
    _pip(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock"), cwd=tmp)
    _pip(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         "--no-index", "--find-links", str(dist), str(wheels[0]), cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    shutil.copy(TRACE, work / "trace.jsonl")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(work),
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg"}
    yield Installed(wheels[0], venv, work, env)


def test_wheel_holds_package_data_and_entry_points(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        names = set(z.namelist())
        eps = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for data in ("tracer/bpf/kmodtrace.bpf.c", "tracer/report.schema.json",
                 "kmodlab/kmodstorm/kmodstorm.c",
                 "kmodlab/kmodstorm/kmodstorm_fail.c", "kmodlab/kmodstorm/Makefile",
                 "kmodlab/programs.tsv"):
        assert data in names, f"{data} is not in the wheel"
    # the kernel tree bcc compiles in without kernel headers (the BTF build)
    nohdr = ROOT / "tracer" / "bpf" / "nohdr"
    for h in nohdr.rglob("*.h"):
        data = f"tracer/bpf/nohdr/{h.relative_to(nohdr)}"
        assert data in names, f"{data} is not in the wheel"
    assert not [n for n in names if n.startswith("tests/")]
    assert "kmodtrace = tracer.cli:main" in eps
    section = eps.split("[kmodtrace.commands]", 1)[1].split("\n[", 1)[0]
    for cmd in ("vm = kmodlab.cli:vm", "parity = kmodlab.cli:parity", "bench = kmodlab.cli:bench"):
        assert cmd in section


def test_imports_come_from_the_venv(installed: Installed) -> None:
    out = installed.python("import kmodlab, tracer; print(tracer.__file__); "
                           "print(kmodlab.__file__)")
    for path in out.split():
        assert Path(path).resolve().is_relative_to(installed.venv.resolve()), path
        assert not Path(path).resolve().is_relative_to(ROOT), path


def test_bpf_source_is_package_data(installed: Installed) -> None:
    out = installed.python("import tracer.probes as p; print(p.BPF_SOURCE.read_text()[:50])")
    assert out.strip()
    assert out.strip() in (ROOT / "tracer" / "bpf" / "kmodtrace.bpf.c").read_text()


def test_lab_data_is_package_data(installed: Installed) -> None:
    out = installed.python("from kmodlab import programs, storms; "
                           "print(len(programs.load())); "
                           "print((storms.KMODSTORM_SRC / 'Makefile').read_text()[:20])")
    count, makefile = out.split("\n", 1)
    assert int(count) > 10
    assert makefile.strip() in (ROOT / "kmodlab" / "kmodstorm" / "Makefile").read_text()


def test_live_ebpf_prints_the_program(installed: Installed) -> None:
    out = installed.kmodtrace("live", "--ebpf").stdout
    assert "struct event {" in out


def test_report_of_a_recorded_trace(installed: Installed) -> None:
    out = installed.kmodtrace("report", "trace.jsonl").stdout
    assert "kernel 6.1.0-56-amd64" in out
    assert any(line.startswith("dummy ") for line in out.splitlines())


def test_report_json(installed: Installed) -> None:
    from tests.schema_check import check_report

    rep = check_report(json.loads(installed.kmodtrace("report", "--json", "trace.jsonl").stdout))
    assert rep["kernel"] == "6.1.0-56-amd64" and rep["requests"] and rep["loads"]


def test_the_installed_schema_is_the_checkout_s(installed: Installed) -> None:
    """The schema ships as package data and tracer.schema reads it from there."""
    out = installed.python("from tracer import schema; import json; "
                           "print(json.dumps(schema.load()))")
    assert json.loads(out) == json.loads((ROOT / "tracer" / "report.schema.json").read_text())


def test_help_lists_the_lab_commands(installed: Installed) -> None:
    out = installed.kmodtrace("--help").stdout
    commands = {line.split()[0] for line in out.split("Commands:", 1)[1].splitlines()
                if line.strip()}
    assert {"live", "record", "report", "boot", "vm", "parity", "bench"} <= commands


def test_environment_cannot_see_the_checkout(installed: Installed) -> None:
    assert "PYTHONPATH" not in installed.env
    assert not installed.work.resolve().is_relative_to(ROOT)
    assert str(ROOT) not in os.pathsep.join(installed.env.values())
