"""Storm generators: many tasks asking for one module at the same moment.

Userspace storms fork N children that block on one pipe and exec together when
it closes; the kernel-thread storm loads kmodlab/kmodstorm, which fires N
request_module() calls from N kthreads at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

KMODSTORM_SRC = resources.files("kmodlab") / "kmodstorm"  # package data


def fork_together(jobs: Sequence[Callable[[], int]]) -> list[int]:
    """Run each job in its own child, all released at once; return exit statuses."""
    r, w = os.pipe()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # returns b"" when the parent closes w: everyone wakes
            try:
                code = job()
            except BaseException:  # noqa: BLE001 - a child never returns into the parent
                code = 111
            os._exit(code & 0xFF)
        pids.append(pid)
    os.close(r)
    os.close(w)
    return [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]


def _exec(argv: list[str]) -> Callable[[], int]:
    def job() -> int:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execvp(argv[0], argv)

    return job


def _socket(family: int) -> Callable[[], int]:
    def job() -> int:
        try:
            socket.socket(family, socket.SOCK_DGRAM).close()
        except OSError as e:
            return e.errno or 1
        return 0

    return job


@dataclass(slots=True)
class Scenario:
    name: str
    generator: str  # how the storm is made: kthread, rtnl, fs, socket, modprobe, selftest
    target: str  # module / link kind / fs type / family number
    count: int
    nowait: bool = False
    mixed: bool = False  # kthread storms: odd threads nowait, even ones wait
    pause_before: float = 0.0  # seconds to sleep first (to land inside or past dups' tail)
    # Filled in by run(): CLOCK_MONOTONIC, the clock bpf_ktime_get_ns() uses.
    start_ns: int = 0
    end_ns: int = 0
    statuses: list[int] = field(default_factory=list)

    @property
    def request_names(self) -> list[str]:
        """The exact request strings the kernel formats for this storm."""
        return {
            "kthread": [self.target],
            "rtnl": [f"rtnl-link-{self.target}"],
            "fs": [f"fs-{self.target}"],
            "socket": [f"net-pf-{self.target}"],
            "modprobe": [],
            "selftest": [],
        }[self.generator]


def build_kmodstorm(release: str, cache: Path) -> Path:
    """Build kmodlab/kmodstorm against this kernel's headers, cached by release and source."""
    src = (KMODSTORM_SRC / "kmodstorm.c").read_bytes() + (KMODSTORM_SRC / "Makefile").read_bytes()
    key = f"{release}-{hashlib.sha256(src).hexdigest()[:12]}"
    ko = cache / key / "kmodstorm.ko"
    if ko.exists():
        return ko
    work = Path("/tmp/kmodstorm-build")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("kmodstorm.c", "Makefile"):  # a Traversable, not always a directory on disk
        (work / name).write_bytes((KMODSTORM_SRC / name).read_bytes())
    # No BTF for our module: it would need pahole, and nothing reads it.
    subprocess.run(["make", "-s", f"KDIR=/lib/modules/{release}/build",
                    "CONFIG_DEBUG_INFO_BTF_MODULES="], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    ko.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "kmodstorm.ko", ko)
    return ko


def run(sc: Scenario, kmodstorm: Path | None) -> None:
    time.sleep(sc.pause_before)
    sc.start_ns = time.monotonic_ns()
    if sc.generator == "kthread":
        assert kmodstorm is not None
        args = ["insmod", str(kmodstorm), f"name={sc.target}", f"count={sc.count}"]
        if sc.nowait:
            args.append("nowait=1")
        if sc.mixed:
            args.append("mixed=1")
        sc.statuses = [subprocess.run(args, check=False).returncode]
        time.sleep(1.0)  # nowait requests and their modprobes finish after init returns
        subprocess.run(["rmmod", "kmodstorm"], check=False)
    elif sc.generator == "rtnl":
        sc.statuses = fork_together([
            _exec(["ip", "link", "add", f"kmt{i}", "type", sc.target]) for i in range(sc.count)])
    elif sc.generator == "fs":
        os.makedirs("/tmp/kmt-mnt", exist_ok=True)
        sc.statuses = fork_together([
            _exec(["mount", "-t", sc.target, "none", "/tmp/kmt-mnt"]) for _ in range(sc.count)])
    elif sc.generator == "socket":
        sc.statuses = fork_together([_socket(int(sc.target)) for _ in range(sc.count)])
    elif sc.generator == "selftest":
        # The kernel's own stress test of request_module()/get_fs_type(), with test_kmod
        script = Path(f"/lib/modules/{os.uname().release}/build/source/tools/testing/"
                      "selftests/kmod/kmod.sh")
        sc.statuses = [subprocess.run(["bash", str(script), "-t", test], cwd=script.parent,
                                      check=False, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL).returncode
                       for test in sc.target.split(",")]
    elif sc.generator == "modprobe":
        sc.statuses = fork_together([_exec(["modprobe", sc.target]) for _ in range(sc.count)])
    else:
        raise ValueError(f"unknown storm generator {sc.generator}")
    time.sleep(0.5)  # let helpers spawned by nowait requests finish
    sc.end_ns = time.monotonic_ns()


def oracle_scenarios() -> list[Scenario]:
    """Storms for the parity run: every dups.c rule, on the oracle kernel's modules."""
    return [
        Scenario("selftest", "selftest", "0001,0003,0004,0008", 1),
        Scenario("wait-50", "kthread", "dummy", 50),
        Scenario("missing", "kthread", "kmt-no-such-module", 5),
        Scenario("mixed", "kthread", "veth", 20, mixed=True),
        Scenario("nowait", "kthread", "minix", 10, nowait=True),
        Scenario("throttle-60", "kthread", "appletalk", 60),
        Scenario("tail-inside", "kthread", "dummy", 5, pause_before=5.0),
        Scenario("modprobe", "modprobe", "xfs", 8),
        Scenario("rtnl", "rtnl", "veth", 4),
        # entries are deleted 60 s after completion: this one must anchor anew
        Scenario("tail-after", "kthread", "dummy", 5, pause_before=65.0),
    ]


def default_scenarios() -> list[Scenario]:
    return [
        Scenario("kthread-50", "kthread", "dummy", 50),
        Scenario("kthread-missing", "kthread", "kmt-no-such-module", 5),
        Scenario("kthread-nowait", "kthread", "ifb", 10, nowait=True),
        Scenario("rtnl", "rtnl", "veth", 8),
        Scenario("fs", "fs", "minix", 8),
        Scenario("socket", "socket", "5", 8),  # AF_APPLETALK: pulls psnap and llc too
        Scenario("modprobe", "modprobe", "xfs", 8),
    ]
