"""Storm generators: many tasks asking for one module at the same moment.

Userspace storms fork N children that block on one pipe and exec together when
it closes; the kernel-thread storm loads kmodlab/kmodstorm, which fires N
request_module() calls from N kthreads at once. Load storms call finit_module() and
init_module() directly (ctypes): kmod 30 never passes MODULE_INIT_COMPRESSED_FILE, and
no tool hands init_module() a bad buffer. The late-announce storm orders its requests
with a fanotify permission event that holds one helper's exec (late_announce()).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import lzma
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

KMODSTORM_SRC = resources.files("kmodlab") / "kmodstorm"  # package data
KMODSTORM_FILES = ("kmodstorm.c", "kmodstorm_fail.c", "Makefile")
KMODSTORM_MODULES = ("kmodstorm", "kmodstorm_fail")
# x86_64 syscall numbers (the lab's VMs): arch/x86/entry/syscalls/syscall_64.tbl
SYS_INIT_MODULE = 175
SYS_FINIT_MODULE = 313
# include/uapi/linux/module.h
MODULE_INIT_COMPRESSED_FILE = 4
LOAD_DIR = Path("/tmp/kmt-load")


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
    # how the storm is made: kthread, rtnl, fs, socket, modprobe, selftest, finit,
    # init-efault, late-announce
    generator: str
    # module / link kind / fs type / family number; finit: alternatives separated by "|"
    # (a module renamed between releases), the first the kernel has is loaded
    target: str
    count: int
    nowait: bool = False
    mixed: bool = False  # kthread storms: odd threads nowait, even ones wait
    pause_before: float = 0.0  # seconds to sleep first (to land inside or past dups' tail)
    # generator "finit": finit_module() flags and arguments; copies: one file per caller
    # (distinct inodes, so idempotent() does not join them); compress: xz as kbuild does;
    # corrupt: a truncated xz stream (module_decompress() fails)
    flags: int = 0
    params: str = ""
    copies: bool = False
    compress: bool = False
    corrupt: bool = False
    # kthread storms: seconds each modprobe sleeps first (a wrapper set as the kernel's
    # modprobe for the storm), so that 50 requests hold the throttle's slots past its 5 s
    # timeout and the rest return -ETIME: a timeout on any machine, however fast
    modprobe_delay: float = 0.0
    # with modprobe_delay: the wrapper exits with this status after the delay instead of
    # running modprobe (50 real modprobes at once take seconds under emulation)
    modprobe_exit: int | None = None
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
            "finit": [],
            "init-efault": [],
            "late-announce": [f"fs-{self.target}"],
        }[self.generator]


def build_kmodstorm(release: str, cache: Path) -> Path:
    """Build kmodlab/kmodstorm against this kernel's headers, cached by release and source;
    returns kmodstorm.ko (kmodstorm_fail.ko lies beside it)."""
    src = b"".join((KMODSTORM_SRC / name).read_bytes() for name in KMODSTORM_FILES)
    # Two builds of one release string (the oracle's configs) differ in struct module:
    # /proc/version carries the build's own stamp.
    src += Path("/proc/version").read_bytes()
    key = f"{release}-{hashlib.sha256(src).hexdigest()[:12]}"
    ko = cache / key / "kmodstorm.ko"
    if all((ko.parent / f"{m}.ko").exists() for m in KMODSTORM_MODULES):
        return ko
    work = Path("/tmp/kmodstorm-build")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in KMODSTORM_FILES:  # a Traversable, not always a directory on disk
        (work / name).write_bytes((KMODSTORM_SRC / name).read_bytes())
    # No BTF for our module: it would need pahole, and nothing reads it.
    subprocess.run(["make", "-s", f"KDIR=/lib/modules/{release}/build",
                    "CONFIG_DEBUG_INFO_BTF_MODULES="], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    ko.parent.mkdir(parents=True, exist_ok=True)
    for m in KMODSTORM_MODULES:
        shutil.copy(work / f"{m}.ko", ko.parent / f"{m}.ko")
    return ko


def module_file(name: str, kmodstorm: Path | None) -> Path:
    """The .ko of NAME: one of kmodstorm's, else the running kernel's (modules.dep)."""
    if kmodstorm is not None and (kmodstorm.parent / f"{name}.ko").exists():
        return kmodstorm.parent / f"{name}.ko"
    root = Path(f"/lib/modules/{os.uname().release}")
    want = {f"{name}.ko", f"{name.replace('_', '-')}.ko"}
    for line in (root / "modules.dep").read_text().splitlines():
        rel = line.split(":", 1)[0]
        if rel.rsplit("/", 1)[-1] in want:
            return root / rel
    raise FileNotFoundError(f"no module {name} in {root}/modules.dep")


def xz(data: bytes) -> bytes:
    """Compressed as scripts/Makefile.modinst does (xz --check=crc32 --lzma2=dict=1MiB):
    the kernel's xz decoder takes CRC32 checks."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                         filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}])


def load_files(sc: Scenario, kmodstorm: Path | None) -> list[Path]:
    """The file each finit_module() caller opens: one shared file, or one copy each."""
    *others, last = sc.target.split("|")
    for name in others:
        with contextlib.suppress(FileNotFoundError):
            path = module_file(name, kmodstorm)
            break
    else:
        name, path = last, module_file(last, kmodstorm)
    data = path.read_bytes()
    if sc.compress:
        data = xz(data)
    if sc.corrupt:
        data = data[: len(data) // 2]
    d = LOAD_DIR / sc.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    suffix = ".ko.xz" if sc.compress else ".ko"
    paths = [d / f"{name}-{i}" / f"{name}{suffix}"
             for i in range(sc.count if sc.copies else 1)]
    for p in paths:  # the same base name: the module's, as modprobe would open it
        p.parent.mkdir()
        p.write_bytes(data)
    return paths if sc.copies else paths * sc.count


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _finit(path: Path, params: str, flags: int) -> Callable[[], int]:
    def job() -> int:
        fd = os.open(path, os.O_RDONLY)
        r = _libc.syscall(ctypes.c_long(SYS_FINIT_MODULE), ctypes.c_int(fd),
                          ctypes.c_char_p(params.encode()), ctypes.c_int(flags))
        return 0 if r == 0 else ctypes.get_errno() or errno.EIO

    return job


def _init_bad_buffer(length: int) -> Callable[[], int]:
    """init_module() with an unmapped buffer: copy_module_from_user() fails -EFAULT
    after its vmalloc(length)."""
    def job() -> int:
        r = _libc.syscall(ctypes.c_long(SYS_INIT_MODULE), ctypes.c_void_p(4096),
                          ctypes.c_ulong(length), ctypes.c_char_p(b""))
        return 0 if r == 0 else ctypes.get_errno() or errno.EIO

    return job


@contextlib.contextmanager
def slow_modprobe(delay: float, status: int | None = None) -> Iterator[None]:
    """The kernel's modprobe (/proc/sys/kernel/modprobe) is a wrapper that sleeps DELAY
    seconds first, then runs modprobe (or exits with STATUS), while inside; nothing
    changes for DELAY 0."""
    if not delay:
        yield
        return
    knob = Path("/proc/sys/kernel/modprobe")
    real = knob.read_text().strip()
    wrapper = Path("/run/kmt-slow/modprobe")
    wrapper.parent.mkdir(exist_ok=True)
    then = f'exec {real} "$@"' if status is None else f"exit {status}"
    wrapper.write_text(f"#!/bin/sh\nsleep {delay}\n{then}\n")
    wrapper.chmod(0o755)
    knob.write_text(str(wrapper))
    try:
        yield
    finally:
        knob.write_text(real)


# include/uapi/linux/fanotify.h
FAN_CLOEXEC = 0x01
FAN_CLASS_CONTENT = 0x04
FAN_MARK_ADD = 0x01
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_ALLOW = 0x01
AT_FDCWD = -100
_FAN_EVENT = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
_FAN_RESPONSE = struct.Struct("=iI")  # struct fanotify_response
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]


class HeldExec:
    """fanotify FAN_OPEN_EXEC_PERM on one file: each exec of it (kernel_execve() of a
    usermode helper included) sleeps in the kernel until allow() answers its event.
    Needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS: OSError (ENOSYS, EINVAL) where it is off.
    Closing the group answers every event still held: allowed."""

    def __init__(self, path: Path) -> None:
        fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"fanotify_init: {os.strerror(e)}")
        self.fd = fd
        if _libc.fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                               str(path).encode()) < 0:
            e = ctypes.get_errno()
            os.close(fd)
            raise OSError(e, f"fanotify_mark {path}: {os.strerror(e)}")

    def next_exec(self, timeout: float) -> tuple[int, int] | None:
        """(event fd, pid) of the next exec held, or None after TIMEOUT seconds."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return None
        data = os.read(self.fd, _FAN_EVENT.size)
        _, _, _, _, _, efd, pid = _FAN_EVENT.unpack(data[:_FAN_EVENT.size])
        return efd, pid

    def allow(self, event: tuple[int, int]) -> None:
        os.write(self.fd, _FAN_RESPONSE.pack(event[0], FAN_ALLOW))
        os.close(event[0])

    def close(self) -> None:
        os.close(self.fd)


def _mount_errno(fstype: str) -> int:
    """mount(2) of FSTYPE: get_fs_type() calls request_module("fs-FSTYPE"), a wait
    request; the errno it fails with (ENODEV for a type no module registers)."""
    os.makedirs("/tmp/kmt-mnt", exist_ok=True)
    r = _libc.mount(b"none", b"/tmp/kmt-mnt", fstype.encode(), 0, None)
    return 0 if r == 0 else ctypes.get_errno()


def _forked(job: Callable[[], int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            code = job()
        except BaseException:  # noqa: BLE001 - a child never returns into the parent
            code = 111
        os._exit(code & 0xFF)
    return pid


def late_announce(sc: Scenario, kmodstorm: Path) -> list[int]:
    """A second announce for an entry already completed, then SC.count wait duplicates
    inside its 60 s tail: the two dups.c forms hand them different values.

    1. An untracked request_module_nowait("fs-TARGET") (kmodstorm, nowait=1) passes
       kmod_dup_request_exists_wait() with no entry; its helper's exec of the modprobe
       wrapper is held (HeldExec), so call_usermodehelper_exec(UMH_WAIT_EXEC) and its
       announce wait.
    2. A wait request for the same name (mount -t TARGET) creates the entry; its helper
       runs modprobe, which finds nothing (exit 1): the first announce, ret 256, completes
       the entry and starts the 60 s tail.
    3. The held exec is allowed: the nowait request's call_usermodehelper_exec() returns 0
       and announces 0 for the same name (by name only, so it finds the entry).
    4. SC.count more wait requests: duplicates of the completed entry. The deferred form
       (kmod_dup_request_announce() overwrites dup_ret every time) hands them 0, the
       refcount form (it returns once completion_done()) 256.

    Returns the statuses: insmod's, then each mount's errno (ENODEV: the request's value
    stays inside the kernel); [-errno] of fanotify where the kernel lacks permission
    events, nothing run; [-ETIMEDOUT, insmod's] if the nowait request's exec never came."""
    wrapper = Path("/run/kmt-late/modprobe")
    wrapper.parent.mkdir(exist_ok=True)
    knob = Path("/proc/sys/kernel/modprobe")
    real = knob.read_text().strip()
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    try:
        held = HeldExec(wrapper)
    except OSError as e:
        return [-(e.errno or errno.EIO)]
    knob.write_text(str(wrapper))
    try:
        statuses = _held_then_late(held, sc.target, kmodstorm)
    finally:
        knob.write_text(real)
        held.close()
    if statuses[0] >= 0:  # the entry is complete and announced twice: its tail
        statuses += [os.waitstatus_to_exitcode(os.waitpid(_forked(
            lambda: _mount_errno(sc.target)), 0)[1]) for _ in range(sc.count)]
    subprocess.run(["rmmod", "kmodstorm"], check=False)
    return statuses


def _held_then_late(held: HeldExec, fstype: str, kmodstorm: Path) -> list[int]:
    """Steps 1 to 3 of late_announce(): [insmod's status, the wait request's errno], or
    [-ETIMEDOUT, insmod's] if the nowait request's exec never came."""
    nowait = subprocess.Popen(["insmod", str(kmodstorm), f"name=fs-{fstype}", "count=1",
                               "nowait=1"])
    first_exec = held.next_exec(30.0)  # the nowait request's helper, held
    if first_exec is None:
        return [-errno.ETIMEDOUT, nowait.wait()]
    anchor = _forked(lambda: _mount_errno(fstype))
    # every other exec of the wrapper (the wait request's helper) runs at once
    deadline = time.monotonic() + 60.0
    while (done := os.waitpid(anchor, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        event = held.next_exec(0.1)
        if event is not None:
            held.allow(event)
    held.allow(first_exec)  # the late announce
    if done[0] == 0:  # the wait request still asleep after a minute: see it end
        done = os.waitpid(anchor, 0)
    return [nowait.wait(), os.waitstatus_to_exitcode(done[1])]


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
        with slow_modprobe(sc.modprobe_delay, sc.modprobe_exit):
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
    elif sc.generator == "finit":
        sc.statuses = fork_together([_finit(p, sc.params, sc.flags)
                                     for p in load_files(sc, kmodstorm)])
    elif sc.generator == "init-efault":
        sc.statuses = fork_together([_init_bad_buffer(int(sc.target))
                                     for _ in range(sc.count)])
    elif sc.generator == "late-announce":
        assert kmodstorm is not None
        sc.statuses = late_announce(sc, kmodstorm)
    else:
        raise ValueError(f"unknown storm generator {sc.generator}")
    time.sleep(0.5)  # let helpers spawned by nowait requests finish
    sc.end_ns = time.monotonic_ns()


# The oracle kernel's command line refuses this module (blacklisted(): -EPERM after the
# read); nothing else asks for it.
BLACKLISTED = "efivarfs"


def oracle_scenarios() -> list[Scenario]:
    """Storms for the parity run: every dups.c rule and every MODULE_STATS failure class,
    on the oracle kernel's signed modules."""
    xz = MODULE_INIT_COMPRESSED_FILE
    return [
        # 0009: 62 get_fs_type() threads, past the 50 throttle slots
        Scenario("selftest", "selftest", "0001,0003,0004,0008,0009", 1),
        Scenario("wait-50", "kthread", "dummy", 50),
        Scenario("missing", "kthread", "kmt-no-such-module", 5),
        Scenario("mixed", "kthread", "veth", 20, mixed=True),
        Scenario("nowait", "kthread", "minix", 10, nowait=True),
        Scenario("throttle-60", "kthread", "appletalk", 60),
        Scenario("tail-inside", "kthread", "dummy", 5, pause_before=5.0),
        Scenario("modprobe", "modprobe", "xfs", 8),
        Scenario("rtnl", "rtnl", "veth", 4),
        # signed copies (distinct inodes): one loads, the others fail in a same-name check
        Scenario("signed-copies", "finit", "tun", 6, copies=True),
        # one xz file: idempotent() joins them; xz copies: len + compressed_len each
        Scenario("xz-shared", "finit", "xxhash_generic", 4, flags=xz, compress=True),
        Scenario("xz-copies", "finit", "blake2b_generic|blake2b", 4, flags=xz, compress=True,
                 copies=True),
        Scenario("xz-corrupt", "finit", "xor", 2, flags=xz, compress=True, corrupt=True,
                 copies=True),
        Scenario("blacklisted", "finit", BLACKLISTED, 2, copies=True),
        Scenario("bad-params", "finit", "kmodstorm_fail", 1, params="err=bogus"),
        Scenario("init-fails", "finit", "kmodstorm_fail", 1),
        Scenario("init-efault", "init-efault", "65536", 2),
        # an untracked nowait request announces after the entry's first announce, then 3
        # wait duplicates come inside the tail: deferred hands them the later ret (0), the
        # refcount form the first (256). Needs fanotify permission events (the 7.3 oracle)
        Scenario("late-announce", "late-announce", "kmt-late-none", 3),
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
        # init_module() of an unreadable buffer: -EFAULT, the other module syscall
        Scenario("init-efault", "init-efault", "65536", 2),
        # 50 slots held for 7 s: the other 30 time out in the throttle (-ETIME)
        Scenario("throttle", "kthread", "kmt-throttle-none", 80, modprobe_delay=7.0),
        # more requests at once than the kretprobe has instances (4096): those without
        # one are seen at their call site's return (tracer/bpf req_site) once its kprobe
        # is attached, on 6.4+ those that time out by the throttle fexit, those that get
        # a slot late by modprobe's saved return (a "modprobe" of 0.5 s)
        Scenario("kretprobe-4200", "kthread", "kmt-crowd-none", 4200, modprobe_delay=0.5,
                 modprobe_exit=1),
    ]
