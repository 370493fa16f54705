"""Boot tracing: a systemd unit that records module loading from early boot until it settles.

`kmodtrace boot install` writes two units and enables both for sysinit.target; the kernel
command line picks which one runs (ConditionKernelCommandLine=), since a unit's ordering
is static:

- `kmodtrace-boot.service` (holding mode), when the line lacks boot-time tracing: it starts
  before systemd-udevd and systemd-modules-load (the two big sources of module loads) and
  tells systemd it is ready once every probe is attached (Type=notify), so those wait for
  bcc's compile. Modules loaded in the initramfs or by PID 1 before it starts are not seen.
- `kmodtrace-boot-beside.service` (beside mode), when the line has the words of
  `kmodtrace boot cmdline` (their marker word, tracer/early.py MARKER): the kernel records
  from its first instant, so nothing needs to wait. It is ordered before nothing of the
  boot, compiles at nice 19 (not CPUWeight=: that would enable the cgroup cpu controller
  for every service and change the scheduling of the boot it measures) and goes back to
  nice 0 once attached (ExecStartPost=, which systemd runs after READY=1), so that it
  drains its ring buffer at the priority of the loads it records; the drain of the
  kernel's buffer then adds what came before.

Both stop by themselves once boot has settled.

Where the trace goes: at that point of boot the root file system is usually still
read-only and /var may not be mounted, so the recorder writes to /run/kmodtrace (tmpfs)
and ExecStopPost= moves the finished trace to /var/log/kmodtrace. A trace left in
/run/kmodtrace (the move failed, or the recorder still runs) is listed too.

A unit that needs /var (LogsDirectory=, RequiresMountsFor=) or a mount namespace
(ProtectSystem=, PrivateTmp=, ...) would pull in mounts that are themselves ordered after
udev: an ordering cycle that systemd breaks by dropping a job. So the hardening here is
capabilities and seccomp only.
"""

from __future__ import annotations

import math
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

UNIT_NAME = "kmodtrace-boot.service"  # holding mode: udev waits for the attach
BESIDE_UNIT = "kmodtrace-boot-beside.service"  # beside mode: with boot-time tracing
HOLD, BESIDE = "hold", "beside"
UNIT_OF = {HOLD: UNIT_NAME, BESIDE: BESIDE_UNIT}
UNIT_NAMES = (UNIT_NAME, BESIDE_UNIT)
# What a mode costs each boot, and how to get the other (boot install and boot status).
MODE_COST = {
    HOLD: "holding mode: systemd-udevd, udev's coldplug trigger and systemd-modules-load "
          "wait until the tracer has compiled and attached (seconds on real hardware), and "
          "what loads before it starts is not seen",
    BESIDE: "beside mode: udev and systemd-modules-load start when they would without "
            "kmodtrace; the tracer compiles at nice 19 beside them, and the kernel's "
            "boot-time trace covers the boot until it attaches",
}
UNIT_DIR = "/etc/systemd/system"
WANTED_BY = "sysinit.target"
LOG_DIR = "/var/log/kmodtrace"
RUN_DIR = "/run/kmodtrace"  # RuntimeDirectory=kmodtrace
UDEV_QUEUE = "/run/udev/queue"  # systemd-udevd keeps it while events are queued
UDEV_CONTROL = "/run/udev/control"  # systemd-udevd's control socket

SETTLE_S = 10  # udev queue empty (and boot finished) this long: settled
MAX_S = 300  # stop anyway after this long
START_TIMEOUT_S = 60  # a tracer that never attaches cannot hold up boot longer
# Beside mode holds nothing back, and at nice 19 in a busy boot Python may not even have
# imported the package (whose extender then asks for more) within 60 s: under emulation
# with 16 vCPUs it had used 18.8 s of CPU when the 60 s ran out. A tracer that never
# attaches still fails, later; meanwhile systemd counts the boot as finished only once
# the unit is ready (its start job is part of the boot's transaction).
BESIDE_START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 20

CAPABILITIES: tuple[str, ...] = ("CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG",
                                 "CAP_SYS_RESOURCE", "CAP_DAC_OVERRIDE")
# Beside mode: the compile runs at this nice value, and ExecStartPost= (after READY=1)
# raises every thread of the recorder back to 0, which needs CAP_SYS_NICE.
COMPILE_NICE = 19
BESIDE_CAPABILITIES = (*CAPABILITIES, "CAP_SYS_NICE")
SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "ExecMainStatus", "ExecMainStartTimestamp",
                   "ExecMainExitTimestamp")

_TRACE_RE = re.compile(r"^boot-(.+)\.jsonl$")

Notice = Callable[[str], None]


class BootError(RuntimeError):
    """Install/uninstall cannot proceed (a foreign file is in the way)."""


# --- the unit ------------------------------------------------------------------------------


def default_exe() -> list[str]:
    """The command that runs kmodtrace: the console script next to this Python, or -m."""
    script = Path(sys.executable).parent / "kmodtrace"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "tracer"]


def _argv(exe: str | Sequence[str] | None) -> list[str]:
    argv = default_exe() if exe is None else [exe] if isinstance(exe, str) else list(exe)
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError(f"the tracer command must start with an absolute path: {argv!r}")
    return argv


def _escape(word: str) -> str:
    """One word of a systemd command line: specifiers and variables kept literal."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_file(run_dir: str = RUN_DIR) -> str:
    """Where the recorder writes during boot (%b: the boot id, 32 hex digits)."""
    return f"{run_dir}/boot-%b.jsonl"


def collect_script(src: str, log_dir: str) -> str:
    """sh script that moves a finished trace into log_dir (nothing to do if there is none)."""
    for p in (src, log_dir):
        if not re.fullmatch(r"[A-Za-z0-9_./%+-]+", p):
            raise ValueError(f"path not allowed in the unit: {p!r}")
    return (f"[ -e {src} ] || exit 0; mkdir -p -m 0700 {log_dir} && "
            f"mv -f {src} {log_dir}/")


def _marker() -> str:
    from tracer.early import MARKER  # not at import: boot loads with the package

    return MARKER


def unit_text(exe: str | Sequence[str] | None = None, log_dir: str = LOG_DIR,
              settle_s: int = SETTLE_S, max_s: int = MAX_S,
              start_timeout_s: int | None = None, mode: str = HOLD) -> str:
    """The text of kmodtrace-boot.service (MODE hold) or kmodtrace-boot-beside.service
    (MODE beside).

    exe: the kmodtrace executable (a str) or the argv prefix that runs it (e.g.
    [python, "-m", "tracer"]); default default_exe().
    """
    if mode not in UNIT_OF:
        raise ValueError(f"mode {mode!r}: not one of {', '.join(UNIT_OF)}")
    if start_timeout_s is None:
        start_timeout_s = START_TIMEOUT_S if mode == HOLD else BESIDE_START_TIMEOUT_S
    argv = _argv(exe)
    out = run_file()
    env = ""
    if argv[1:] == ["-m", "tracer"]:  # not installed: find the package where it is now
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env = f"Environment={_escape('PYTHONPATH=' + pkg_parent)}\n"
    cmd = " ".join(_escape(a) for a in argv)
    script = collect_script(out, log_dir)
    marker = _marker()
    if mode == HOLD:
        head = f"""\
# Installed by `kmodtrace boot install`; `kmodtrace boot uninstall` removes it.
# Records module requests and loads from early boot (before udev and
# systemd-modules-load) until boot settles; the trace ends up in {log_dir}.
# Runs when the kernel command line lacks boot-time tracing ({marker});
# with it, {BESIDE_UNIT} runs instead and holds nothing.
# To skip it for one boot: systemd.mask={UNIT_NAME} on the kernel command line.
[Unit]
Description=kmodtrace: record module loading during boot
DefaultDependencies=no
ConditionKernelCommandLine=!{marker}
Wants=sys-kernel-tracing.mount sys-kernel-debug.mount
After=sys-kernel-tracing.mount sys-kernel-debug.mount
Before=systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service
Before={WANTED_BY} shutdown.target
Conflicts=shutdown.target
"""
        extra, caps = "", CAPABILITIES
    else:
        head = f"""\
# Installed by `kmodtrace boot install`; `kmodtrace boot uninstall` removes it.
# Runs when the kernel command line has boot-time tracing ({marker}, from
# `kmodtrace boot cmdline`): the kernel records from its first instant, so this
# unit holds nothing back. udev and systemd-modules-load start as they would
# without it; it compiles at nice {COMPILE_NICE}, returns to nice 0 once attached, drains
# what the kernel recorded before, and records until boot settles; the trace
# ends up in {log_dir}.
# To skip it for one boot: systemd.mask={BESIDE_UNIT} on the kernel command line.
[Unit]
Description=kmodtrace: record module loading during boot, beside udev
DefaultDependencies=no
ConditionKernelCommandLine={marker}
Wants=sys-kernel-tracing.mount sys-kernel-debug.mount
After=sys-kernel-tracing.mount sys-kernel-debug.mount
Before=shutdown.target
Conflicts=shutdown.target
"""
        # -g: every thread of the recorder's process group (renice -p would change
        # the main thread alone); systemd runs ExecStartPost= after READY=1.
        # renice says "old priority 19, new priority 0" into the unit's journal.
        extra = (f"Nice={COMPILE_NICE}\n"
                 "ExecStartPost=-/bin/sh -c 'renice -n 0 -g \"$$MAINPID\"'\n")
        caps = BESIDE_CAPABILITIES
    return f"""{head}
[Service]
Type=notify
NotifyAccess=main
{env}ExecStart={cmd} record --output={out} --until-settled={settle_s} --duration={max_s}
{extra}ExecStopPost=/bin/sh -c '{script}'
TimeoutStartSec={start_timeout_s}
TimeoutStopSec={STOP_TIMEOUT_S}
Restart=no
RuntimeDirectory={Path(RUN_DIR).name}
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
UMask=0077
LimitMEMLOCK=infinity
CapabilityBoundingSet={" ".join(caps)}
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK
SystemCallArchitectures=native

[Install]
WantedBy={WANTED_BY}
"""


# --- the start timeout while bcc compiles ----------------------------------------------------

EXTEND_EVERY_S = 5.0  # how often a progressing attach asks for more time
# Each request: this long from now; a stall this long times the unit out. Not 60 s: while
# Python loads libbcc (dlopen of LLVM, holding the GIL) the watching thread cannot run, and
# under emulation on a loaded host that took over 60 s.
EXTEND_BY_S = 180
EXTEND_MAX_S = 1200  # never past this long after attach began: a busy loop cannot hold boot


def thread_activity(tid: int) -> Callable[[], tuple[float, int]]:
    """(CPU seconds, context switches) of thread TID of this process, readable from any
    thread; (0.0, 0) once it cannot be read."""
    base = f"/proc/self/task/{tid}"

    def read() -> tuple[float, int]:
        try:
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                switches = sum(int(line.split()[1]) for line in f
                               if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        except (OSError, IndexError, ValueError):
            return 0.0, 0
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK"), switches

    return read


class StartTimeoutExtender:
    """Keeps systemd's start timeout (TimeoutStartSec=) ahead of a slow attach that progresses.

    bcc compiles the probes and the kernel attaches them before READY=1; under emulation that
    takes minutes, far more than the unit's TimeoutStartSec. Used as a context manager around
    the attach, in the attaching thread: a daemon thread sends EXTEND_TIMEOUT_USEC= (systemd
    236+) every every_s while that thread has run since the last look (used CPU time, or was
    switched in and out: clang, the verifier, reading headers and waiting on the kernel all
    do; a thread blocked for good does neither), each asking for extend_s from now, never
    past max_s after the start. A stalled or endless attach therefore still runs out of time
    and fails the unit. Outside systemd (no NOTIFY_SOCKET) nothing starts. log() hears when
    the attach stalls or moves again, and a summary at the end.
    """

    def __init__(self, notify: Callable[[str], None], every_s: float = EXTEND_EVERY_S,
                 extend_s: float = EXTEND_BY_S, max_s: float = EXTEND_MAX_S,
                 activity: Callable[[], tuple[float, int]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None) -> None:
        self.notify, self.every_s, self.extend_s, self.max_s = notify, every_s, extend_s, max_s
        self._activity, self._clock, self._log = activity, clock, log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = 0.0
        self._last: tuple[float, int] = (0.0, 0)
        self._stalled = False
        self.sent = 0  # extensions sent

    def begin(self) -> None:
        """Start watching the calling thread (no thread; tick() does the work)."""
        if self._activity is None:
            self._activity = thread_activity(threading.get_native_id())
        self.start = self._clock()
        self._last = self._activity()
        self.extend_now()

    def extend_now(self) -> None:
        """One extension at once: the caller is about to start a step no tick can watch."""
        left = self.start + self.max_s - self._clock()
        if left > 0:
            self._extend(left)

    def _extend(self, left: float) -> None:
        """Ask for extend_s more, never past max_s after the start (LEFT seconds away)."""
        try:
            self.notify(f"EXTEND_TIMEOUT_USEC={int(min(self.extend_s, left) * 1_000_000)}")
            self.sent += 1
        except OSError as e:
            self._say(f"cannot extend the start timeout: {e}")

    def tick(self) -> bool:
        """One look: extend if the watched thread progressed; False once past max_s."""
        assert self._activity is not None
        now, seen = self._clock(), self._activity()
        left = self.start + self.max_s - now
        if left <= 0:
            self._say(f"attach still running after {self.max_s:.0f}s: no more start time")
            return False
        progressed = seen != self._last
        self._last = seen
        if progressed != (not self._stalled):
            self._stalled = not progressed
            self._say(f"attach {'stalled' if self._stalled else 'moving again'} "
                      f"{now - self.start:.0f}s in")
        if progressed:
            self._extend(left)
        return True

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s) and self.tick():
            pass

    def __enter__(self) -> StartTimeoutExtender:
        if self._thread is None and os.environ.get("NOTIFY_SOCKET"):
            self.begin()
            self._thread = threading.Thread(target=self._loop, name="extend-start-timeout",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._say(f"start timeout extended {self.sent} times over "
                      f"{self._clock() - self.start:.0f}s of attaching")


def _sd_notify(message: str) -> None:
    """tracer.live's sd_notify, for the early extender (importing live would be the slow
    part it has to cover)."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


_early: StartTimeoutExtender | None = None


def extend_from_process_start() -> None:
    """Under systemd, extend the start timeout from the moment the tracer's package loads.

    The start timeout runs from exec, and under emulation Python's start and the imports
    alone took 57 s of a 60 s TimeoutStartSec in a 2-vCPU guest (more with 16 vCPUs) before
    the attach began. The extender started here watches the importing (main) thread;
    start_timeout_extender() hands it to the attach, whose end stops it.
    """
    global _early
    if _early is None and os.environ.get("NOTIFY_SOCKET"):
        _early = StartTimeoutExtender(_sd_notify, log=lambda m: print(m, file=sys.stderr))
        _early.__enter__()


def start_timeout_extender(notify: Callable[[str], None],
                           log: Callable[[str], None] | None = None) -> StartTimeoutExtender:
    """The extender to hold around the attach: the one running since the package loaded,
    if any, else a new one (which starts only under systemd)."""
    global _early
    ext, _early = _early, None
    if ext is None:
        return StartTimeoutExtender(notify, log=log)
    ext._log = log
    ext.extend_now()  # the attach begins by loading libbcc, which the ticks cannot watch
    return ext


# --- stopping once boot has settled ------------------------------------------------------


def udev_queue_exists() -> bool:
    return os.path.exists(UDEV_QUEUE)


def udevd_running() -> bool:
    """systemd-udevd's control socket exists once it is up."""
    return os.path.exists(UDEV_CONTROL)


def systemd_boot_finished() -> bool:
    """False while systemd is still starting units; True once it is up (or not systemd)."""
    if not os.path.isdir("/run/systemd/system"):
        return True
    try:
        p = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True,
                           timeout=30, check=False)
    except OSError:
        return True  # no systemctl to ask: rely on the udev queue and max_s
    except subprocess.TimeoutExpired:
        return False  # a busy boot: ask again
    # Only a state past start-up counts: under load systemctl can fail to reach PID 1 and
    # print nothing, which once ended a 16-vCPU recording before udev's coldplug.
    return p.stdout.strip() in ("running", "degraded", "maintenance", "stopping")


class SettleWatcher:
    """Decides when a boot recording may stop: poll() it from the tracing loop.

    poll() turns True (and stays True) once the udev queue has been empty, and boot
    finished, continuously for idle_s; or once max_s have passed since construction.
    `reason` then says which ("settled" or "max-duration").

    Why boot_done and udev_up: before systemd-udevd runs there is no queue file either,
    so an absent queue alone would "settle" at once. boot_done() (systemctl
    is-system-running past "starting"; True where systemd is not running) is asked at
    most every check_every_s until it says True; udev_up() (its control socket) must
    have been seen too, since without systemd boot_done() is True from the start.
    """

    def __init__(self, idle_s: float, max_s: float = math.inf,
                 clock: Callable[[], float] = time.monotonic,
                 queue_exists: Callable[[], bool] = udev_queue_exists,
                 boot_done: Callable[[], bool] = systemd_boot_finished,
                 check_every_s: float = 1.0,
                 udev_up: Callable[[], bool] = udevd_running) -> None:
        self.idle_s, self.max_s = idle_s, max_s
        self._udev_up = udev_up
        self._udev_seen = False
        self._clock, self._queue_exists, self._boot_done = clock, queue_exists, boot_done
        self._check_every_s = check_every_s
        self.start = clock()
        self._booted = False
        self._next_check = self.start
        self._quiet_since: float | None = None
        self.reason: str | None = None

    def poll(self) -> bool:
        if self.reason is not None:
            return True
        now = self._clock()
        if now - self.start >= self.max_s:
            self.reason = "max-duration"
            return True
        if not self._booted and now >= self._next_check:
            self._booted = self._boot_done()
            self._next_check = now + self._check_every_s
        if not self._udev_seen:
            self._udev_seen = self._udev_up()
        if not self._booted or not self._udev_seen or self._queue_exists():
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since >= self.idle_s:
            self.reason = "settled"
            return True
        return False


# --- install / uninstall -------------------------------------------------------------------


def _paths(root: str | os.PathLike[str], name: str = UNIT_NAME) -> tuple[Path, Path]:
    base = Path(root) / UNIT_DIR.lstrip("/")
    return base / name, base / f"{WANTED_BY}.wants" / name


def _link_target(name: str = UNIT_NAME) -> str:
    return f"{UNIT_DIR}/{name}"  # what `systemctl enable` writes (absolute, in-root)


def _systemd_running(root: str | os.PathLike[str]) -> bool:
    return os.path.realpath(root) == "/" and os.path.isdir("/run/systemd/system")


def _daemon_reload(notice: Notice | None) -> None:
    try:
        p = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True,
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        if notice:
            notice(f"systemctl daemon-reload failed: {e}")
        return
    if p.returncode != 0 and notice:
        notice(f"systemctl daemon-reload failed: {p.stderr.strip()}")


def _mkdirs(d: Path, changed: list[str]) -> None:
    missing = [p for p in [d, *d.parents] if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o755)
        changed.append(str(p))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _exe_warnings(argv: list[str], root: str | os.PathLike[str]) -> list[str]:
    if os.path.realpath(root) != "/":
        return []
    warn = []
    exe = argv[0]
    if not os.access(exe, os.X_OK):
        warn.append(f"{exe} is not executable here")
    else:
        try:
            if os.stat(exe).st_dev != os.stat("/").st_dev:
                warn.append(f"{exe} is not on the root file system: at early boot its file "
                            "system may not be mounted yet, and the unit would fail")
        except OSError as e:
            warn.append(f"{exe}: {e}")
    return warn


def _why_untrusted(path: Path) -> str | None:
    """Why a user other than root could change what PATH is: "P is ..." or None.

    Checks PATH and every directory above it: each must be owned by root and not writable
    by group or others. A root-owned directory with the sticky bit (/tmp) may be
    world-writable above PATH: nobody else can rename or replace what root owns there.
    Symlinks are followed to their target, which is checked the same way.
    """
    path = Path(os.path.abspath(path))
    for q in [path, *path.parents]:
        try:
            st = os.lstat(q)
        except OSError as e:
            return f"{q} cannot be checked ({e.strerror})"
        if st.st_uid != 0:
            return f"{q} is owned by uid {st.st_uid}, not root"
        if stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; its target is checked below
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and q != path
        if writable and not sticky:
            who = "group and others" if writable == stat.S_IWGRP | stat.S_IWOTH else (
                "its group" if writable == stat.S_IWGRP else "others")
            return f"{q} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    real = Path(os.path.realpath(path))
    return None if real == path else _why_untrusted(real)


def _interpreter(exe: Path) -> Path | None:
    """The #! interpreter of a script (a console script's Python), if it has one."""
    try:
        with open(exe, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]) if words and os.path.isabs(words[0]) else None


def check_trusted(argv: Sequence[str]) -> None:
    """Refuse (BootError) a boot command that a user other than root could change.

    root runs it at every boot: the executable, its #! interpreter (the venv's Python, and
    what that links to), the venv, the tracer package it imports, and every directory above
    each, must be root's alone.
    """
    exe = Path(argv[0])
    what: list[tuple[str, Path]] = [("command", exe)]
    python = _interpreter(exe) if not exe.name.startswith("python") else exe
    if python is not None:
        what.append(("Python", python))
    for binary in (exe, python):
        if binary is not None and (binary.parent.parent / "pyvenv.cfg").is_file():
            what.append(("venv", binary.parent.parent / "pyvenv.cfg"))
    # the package the command imports: this one (-m tracer's PYTHONPATH, or the venv's)
    what.append(("tracer package", Path(__file__).resolve().parent / "__init__.py"))
    for role, path in what:
        why = _why_untrusted(path)
        if why is not None:
            raise BootError(
                f"refusing to install: the boot {role} {path} is not root's alone: {why}; "
                "root would run what another user can change at every boot (fix: chown "
                "root and chmod go-w it, or install kmodtrace where only root can write)")


def install(root: str = "/", exe: str | Sequence[str] | None = None, enable: bool = True,
            run_systemctl: bool = True, notice: Notice | None = None) -> list[str]:
    """Write both units (and their sysinit.target.wants links); return the paths changed.

    The kernel command line of each boot picks the one that runs (ConditionKernelCommandLine=).
    Idempotent: a second call returns []. BootError if the command is not root's alone
    (check_trusted), or a foreign file is in the way (checked before anything is written).
    The enable links are made here, so it works on a scratch root without systemctl;
    `systemctl daemon-reload` runs only for root "/" on a system running systemd.
    """
    argv = _argv(exe)
    check_trusted(argv)
    if enable:
        for name in UNIT_NAMES:
            link = _paths(root, name)[1]
            if link.exists() and not link.is_symlink():
                raise BootError(f"{link} exists and is not a symlink; not touching it "
                                "(fix: move it away if it is not yours, then install again)")
    changed: list[str] = []
    for mode, name in UNIT_OF.items():
        unit, link = _paths(root, name)
        _mkdirs(unit.parent, changed)
        text = unit_text(argv, mode=mode)
        if unit.is_symlink() or not unit.is_file() or unit.read_text() != text:
            if unit.is_symlink():
                unit.unlink()
            _write_atomic(unit, text)
            changed.append(str(unit))
        if enable:
            target = _link_target(name)
            if not (link.is_symlink() and os.readlink(link) == target):
                _mkdirs(link.parent, changed)
                if link.is_symlink():
                    link.unlink()
                link.symlink_to(target)
                changed.append(str(link))
    for w in _exe_warnings(argv, root):
        if notice:
            notice(f"warning: {w}")
    if changed and run_systemctl and _systemd_running(root):
        _daemon_reload(notice)
    return changed


def uninstall(root: str = "/", run_systemctl: bool = True,
              notice: Notice | None = None) -> list[str]:
    """Remove both units and their enable links (and the directories left empty by that).

    Returns the paths removed ([] if nothing was installed). Recorded traces in
    /var/log/kmodtrace and /run/kmodtrace are kept; notice() says where they are.
    """
    paths = [p for name in UNIT_NAMES for p in reversed(_paths(root, name))]
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            raise BootError(f"{p} is a directory, not what install wrote; not touching "
                            "it (fix: move it away if it is not yours, then uninstall again)")
    removed: list[str] = []
    for p in paths:
        if p.is_symlink() or p.exists():
            p.unlink()
            removed.append(str(p))
    link = _paths(root)[1]
    # Directories install may have made, bottom up, while empty.
    top = Path(root)
    for d in [link.parent, *link.parent.parents]:
        if d == top or not d.is_relative_to(top):
            break
        try:
            d.rmdir()
        except OSError:
            break
        removed.append(str(d))
    traces = boot_traces(Path(root) / LOG_DIR.lstrip("/"), Path(root) / RUN_DIR.lstrip("/"))
    if notice and traces:
        where = sorted({str(t.parent) for t in traces})
        notice(f"kept {len(traces)} recorded boot trace(s) in {', '.join(where)}")
    if removed and run_systemctl and _systemd_running(root):
        _daemon_reload(notice)
    return removed


# --- status and recorded boots ---------------------------------------------------------------


def boot_id_of(path: Path) -> str:
    m = _TRACE_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path.name} is not a boot trace name (boot-ID.jsonl)")
    return m.group(1)


def _norm_id(boot: str) -> str:
    return boot.replace("-", "").lower()


def boot_traces(log_dir: str | os.PathLike[str] = LOG_DIR,
                run_dir: str | os.PathLike[str] | None = RUN_DIR) -> list[Path]:
    """Every boot-*.jsonl in log_dir (and run_dir), newest first (by mtime).

    A boot id present in both (a move in progress) counts once, the log_dir copy.
    """
    seen: dict[str, Path] = {}
    for d in [log_dir] + ([run_dir] if run_dir is not None else []):
        try:
            entries = sorted(Path(d).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for p in entries:
            if _TRACE_RE.match(p.name) and p.is_file():
                seen.setdefault(_norm_id(boot_id_of(p)), p)
    paths = list(seen.values())
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def find_boot_trace(log_dir: str | os.PathLike[str] = LOG_DIR, boot: str | None = None,
                    run_dir: str | os.PathLike[str] | None = RUN_DIR) -> Path:
    """The trace of one boot.

    boot None or "0": the newest; "-N": N boots before it (journalctl style, by mtime);
    anything else: a boot id (dashes and case ignored) or a unique prefix of one.
    """
    traces = boot_traces(log_dir, run_dir)
    where = str(log_dir) + (f" or {run_dir}" if run_dir is not None else "")
    if not traces:
        raise ValueError(f"no boot traces (boot-*.jsonl) in {where}: is `kmodtrace boot "
                         "install` done and has the machine booted since?")
    if boot is None:
        boot = "0"
    boot = boot.strip()
    if re.fullmatch(r"0|-[0-9]+", boot):
        n = -int(boot)
        if n >= len(traces):
            raise ValueError(f"boot {boot}: only {len(traces)} boot trace(s) in {where} "
                             f"(0 .. -{len(traces) - 1})")
        return traces[n]
    want = _norm_id(boot)
    if not want or not re.fullmatch(r"[0-9a-z]+", want):
        raise ValueError(f"boot {boot!r}: not a boot id, a prefix of one, 0 or -N")
    exact = [p for p in traces if _norm_id(boot_id_of(p)) == want]
    if exact:
        return exact[0]
    hits = [p for p in traces if _norm_id(boot_id_of(p)).startswith(want)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = ", ".join(boot_id_of(p) for p in traces[:5])
        more = f" (and {len(traces) - 5} more)" if len(traces) > 5 else ""
        raise ValueError(f"no boot trace for boot {boot!r} in {where}; recorded: {known}{more}")
    raise ValueError(f"boot {boot!r} is ambiguous: it matches "
                     f"{', '.join(boot_id_of(p) for p in hits)}")


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A,B` output (A=x lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _current_boot_id() -> str | None:
    from tracer.record import boot_id  # imported here: record pulls in the model

    return _norm_id(boot_id()) or None


def next_mode(root: str = "/", this_cmdline: str | None = None) -> tuple[str, str]:
    """The mode the next boot will likely use (HOLD or BESIDE), and why.

    The GRUB drop-in of `boot install --bootloader` decides where it is installed under
    ROOT; else, on this system, the words on this boot's command line (a user who added
    them to the boot loader keeps them); else holding mode. THIS_CMDLINE: this boot's
    command line (default /proc/cmdline where ROOT is "/").
    """
    from tracer import bootline, early  # not at import: boot loads with the package

    marker = early.MARKER
    dropin = Path(root) / bootline.GRUB_DROPIN.lstrip("/")
    if dropin.is_file():
        if marker in re.split(r"[\s\"']+", dropin.read_text(errors="replace")):
            return BESIDE, f"the GRUB drop-in {bootline.GRUB_DROPIN} puts boot-time tracing " \
                           "on the kernel command line"
        return HOLD, (f"the GRUB drop-in {bootline.GRUB_DROPIN} lacks the word {marker} "
                      "(written by an older kmodtrace): run `kmodtrace boot install "
                      "--bootloader` again")
    if this_cmdline is None and os.path.realpath(root) == "/":
        try:
            this_cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            this_cmdline = None
    if this_cmdline is not None and marker in this_cmdline.split():
        return BESIDE, "this boot's kernel command line has boot-time tracing (if the boot " \
                       "loader keeps the words you added, the next one has it too)"
    if this_cmdline is not None and early.in_cmdline(this_cmdline):
        return HOLD, (f"this boot's command line has boot-time tracing without the word "
                      f"{marker} (an older `kmodtrace boot cmdline`): replace the words with "
                      "what `kmodtrace boot cmdline` prints now")
    return HOLD, "no boot-time tracing on the kernel command line"


def unit_for_cmdline(text: str) -> str:
    """The unit a boot with kernel command line TEXT runs (as its conditions decide)."""
    return BESIDE_UNIT if _marker() in text.split() else UNIT_NAME


def how_to_avoid_holding() -> str:
    return ("to keep udev from waiting, put boot-time tracing on the kernel command line: "
            "`kmodtrace boot install --bootloader` (GRUB), or add the words "
            "`kmodtrace boot cmdline` prints to your boot loader")


def status(root: str = "/", exe: str | Sequence[str] | None = None) -> dict[str, Any]:
    """What is installed, whether it is current, the recorded boots, and the units' state.

    Keys: units (name -> path, installed, enabled, current: the unit is what install would
    write now); unit, installed, enabled, current: the same for both together (unit: the
    holding one's path); mode and mode_why (next_mode()) and mode_cost; traces (newest
    first: path, boot, size, mtime, pending = still in /run), warnings, systemd
    (ActiveState, Result, ExecMainStatus... of the unit this boot ran, or None where not
    asked/possible; "Id" names it).
    """
    try:
        argv: list[str] | None = _argv(exe)
    except ValueError:
        argv = None
    units: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for mode, name in UNIT_OF.items():
        unit, link = _paths(root, name)
        installed = unit.is_file()
        expected = unit_text(argv, mode=mode) if argv is not None else None
        current = installed and expected is not None and unit.read_text() == expected
        enabled = link.is_symlink() and os.readlink(link) in (_link_target(name), f"../{name}")
        units[name] = {"path": str(unit), "installed": installed, "enabled": enabled,
                       "current": current}
        if installed and not current:
            warnings.append(f"{unit} differs from what `kmodtrace boot install` would write "
                            "now; install again to update it")
        if installed and not enabled:
            warnings.append(f"{name} is installed but not enabled for {WANTED_BY}")
    installed_any = any(u["installed"] for u in units.values())
    both = {k: all(u[k] for u in units.values()) for k in ("installed", "enabled", "current")}
    if installed_any and not both["installed"]:
        missing = [n for n, u in units.items() if not u["installed"]]
        warnings.append(f"{', '.join(missing)} is missing (installed by an older kmodtrace?): "
                        "install again")
    here = os.path.realpath(root) == "/"
    this_boot = _current_boot_id() if here else None
    run_dir = Path(root) / RUN_DIR.lstrip("/")
    traces = []
    for p in boot_traces(Path(root) / LOG_DIR.lstrip("/"), run_dir):
        st = p.stat()
        bid = boot_id_of(p)
        traces.append({"path": str(p), "boot": bid, "size": st.st_size, "mtime": st.st_mtime,
                       "pending": p.parent == run_dir,
                       "this_boot": this_boot is not None and _norm_id(bid) == this_boot})
    if installed_any:
        if argv is None:
            warnings.append(f"the tracer command must start with an absolute path: {exe!r}")
        else:
            warnings += _exe_warnings(argv, root)
    mode, why = next_mode(root)
    systemd: dict[str, str] | None = None
    if _systemd_running(root):
        for name in UNIT_NAMES:
            try:
                props = ",".join(("Id", "ConditionResult", *SHOW_PROPERTIES))
                shown = subprocess.run(["systemctl", "show", name, "-p", props],
                                       capture_output=True, text=True, timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if shown.returncode == 0:
                props_of = parse_show(shown.stdout)
                if systemd is None or props_of.get("ConditionResult") == "yes":
                    systemd = props_of
    return {"unit": units[UNIT_NAME]["path"], **both, "units": units, "mode": mode,
            "mode_why": why, "mode_cost": MODE_COST[mode], "traces": traces,
            "warnings": warnings, "systemd": systemd}
