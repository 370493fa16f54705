"""Plain records built from events: one per module request, one per load attempt.

These are what the model, the report and the live output consume. They carry no
bcc types, so they are built the same way from a live ring buffer or a recorded
trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal

from tracer.udev import Device

# Not the kernel's: a story whose closing event never came (a missed kretprobe, a ring
# buffer drop, the tracer started mid-way) is dropped after this long, by the correlator
# and by the model alike, so that state stays bounded.
STALE_NS: Final = 600 * 1_000_000_000


def kmod_name(name: str) -> str:
    """Module names as kmod spells them: dashes become underscores."""
    return name.replace("-", "_")


def module_from_path(path: str) -> str:
    """`xfs.ko.xz` -> `xfs`; the kmod name of a module file."""
    base = os.path.basename(path)
    idx = base.find(".ko")
    return kmod_name(base[:idx] if idx > 0 else base)


def decode_wait_status(status: int) -> str:
    """Render a raw wait status (what request_module returns with wait) as text."""
    if status < 0:
        return f"error {os.strerror(-status)} ({status})"
    if status & 0x7F == 0:
        return f"exit {(status >> 8) & 0xFF}"
    return f"signal {status & 0x7F}"


@dataclass(slots=True)
class Load:
    """One finit_module() or init_module() call."""

    syscall: str  # "finit_module" or "init_module"
    pid: int
    tid: int
    comm: str
    ppid: int
    start_ns: int
    end_ns: int | None = None
    ret: int | None = None
    file: str = ""  # base name of the file (finit_module only)
    dev: int = 0
    ino: int = 0
    size: int = 0  # file size on disk (finit) or buffer length (init)
    # info->len where known: the module's length after its signature is stripped and
    # after decompression, what MODULE_STATS counts. None: size stands for it.
    mod_len: int | None = None
    flags: int = 0
    # The module_patient_check_exists() call traced last (6.4+): "Becoming"
    # (early_mod_check()) or "Load" (add_unformed_module())
    patient_check: str | None = None
    kernel_name: str = ""  # name the kernel looked up while loading
    loaded: bool = False  # module:module_load fired inside this call
    init_start_ns: int | None = None
    init_end_ns: int | None = None
    init_ret: int | None = None
    request_id: int | None = None  # the Request whose modprobe made this call
    alias: str = ""  # the request name modprobe resolved (udev's: device.modalias)
    device: Device | None = None  # the device a udev worker loaded this for
    id: int = 0

    @property
    def module(self) -> str:
        """Best name for the module: the kernel's, else the file's."""
        if self.kernel_name:
            return kmod_name(self.kernel_name)
        return module_from_path(self.file) if self.file else ""

    @property
    def duration_ns(self) -> int | None:
        return None if self.end_ns is None else self.end_ns - self.start_ns

    @property
    def init_ns(self) -> int | None:
        if self.init_start_ns is None or self.init_end_ns is None:
            return None
        return self.init_end_ns - self.init_start_ns

    @property
    def inode(self) -> tuple[int, int] | None:
        return (self.dev, self.ino) if self.syscall == "finit_module" and self.ino else None


@dataclass(slots=True)
class Request:
    """One __request_module() call and everything it caused."""

    pid: int
    tid: int
    comm: str
    ppid: int
    wait: bool
    start_ns: int
    fmt: str = ""  # the format string seen at entry
    arg: str = ""  # first string vararg at entry, for naming rejected requests
    name: str = ""  # formatted name from module:module_request
    ip: int = 0  # call site
    tp_ns: int | None = None  # when module:module_request fired
    # when kmod_dup_request_exists_wait() was entered (dups.c only): the order in which
    # requests reached kmod_dup_mutex
    dup_enter_ns: int | None = None
    # when it returned (DUP_VERDICT): after kmod_dup_mutex was released, so no request
    # entering later can have taken the mutex before this one
    dup_verdict_ns: int | None = None
    end_ns: int | None = None
    ret: int | None = None
    umh_path: str = ""
    umh_name: str = ""  # the name modprobe was given (last argv)
    umh_wait: int = 0
    umh_ptr: int = 0
    umh_start_ns: int | None = None
    umh_end_ns: int | None = None
    umh_ret: int | None = None
    modprobe_pid: int | None = None
    modprobe_exit: int | None = None  # exit code passed to do_exit (a wait status)
    # a tuple: most requests load nothing, and the 10 000 a storm holds open need no list
    load_ids: tuple[int, ...] = ()
    # Where dups.c is built in: the kernel's own verdict and the value it returned
    kernel_dup: bool | None = None
    kernel_dup_ret: int | None = None
    # kmod_dup_request_announce() traced in this request's task: when, and the ret it gave
    kernel_announce_ns: int | None = None
    kernel_announce_ret: int | None = None
    id: int = 0

    @property
    def kernel_verdict(self) -> Literal["first", "duplicate", "untracked"] | None:
        """kmod_dup_request_exists_wait()'s answer where traced: a wait request it did not
        call a duplicate added the entry; a nowait one was not tracked."""
        if self.kernel_dup is None:
            return None
        if self.kernel_dup:
            return "duplicate"
        return "first" if self.wait else "untracked"

    @property
    def kernel_ret(self) -> int | None:
        """What the kernel returned by its own verdict: a duplicate's *dup_ret, else ret."""
        if self.kernel_dup is None:
            return None
        return self.kernel_dup_ret if self.kernel_dup else self.ret

    @property
    def display_name(self) -> str:
        """The formatted name, or a best effort from the entry for rejected requests."""
        if self.name:
            return self.name
        if self.fmt == "%s" and self.arg:
            return self.arg
        if "%s" in self.fmt and self.arg:
            return self.fmt.replace("%s", self.arg, 1)
        return self.fmt

    @property
    def arrive_ns(self) -> int | None:
        """When it reached dups.c: the kprobe before kmod_dup_mutex where traced, else the
        tracepoint just before it."""
        return self.dup_enter_ns if self.dup_enter_ns is not None else self.tp_ns

    @property
    def queue_ns(self) -> int | None:
        """Time between entry and the tracepoint: queued behind the kmod throttle."""
        return None if self.tp_ns is None else self.tp_ns - self.start_ns

    @property
    def duration_ns(self) -> int | None:
        return None if self.end_ns is None else self.end_ns - self.start_ns

    @property
    def rejected(self) -> bool:
        """Finished without reaching module:module_request (LSM, throttle, no modprobe)."""
        return self.end_ns is not None and self.tp_ns is None
