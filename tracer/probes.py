"""Compile tracer/bpf/kmodtrace.bpf.c with bcc, attach what this kernel has, stream events.

The only module that imports bcc. A hook the kernel lacks is skipped with a
notice; counters for lost events (failed ring-buffer reservations) and missed
kretprobes are read back so that nothing is dropped silently.
"""

from __future__ import annotations

import ctypes
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tracer import kernel
from tracer.events import Event, c_definitions, decode

# Package data, found the way bcc finds its helpers.h: it ships inside the wheel.
BPF_SOURCE = resources.files("tracer") / "bpf" / "kmodtrace.bpf.c"

# Every sleeping __request_module call holds a kretprobe instance; storms on big
# machines put thousands in flight (the kernel default is 2 * NR_CPUS).
DEFAULT_MAXACTIVE = 4096
# 64 MiB: ~225 000 events of 296 bytes before the consumer must catch up.
DEFAULT_RINGBUF_PAGES = 16384


class TracerError(RuntimeError):
    """A one-line, user-facing reason the tracer cannot run."""


@dataclass(frozen=True, slots=True)
class Hook:
    probe_type: str  # "kprobe", "kretprobe" or "tracepoint"
    target: str  # symbol, or "category:event"
    fn: str  # BPF function (kprobes) or HAVE_TP_ macro suffix (tracepoints)
    why: str
    # Debug-only hooks (dups.c) are absent from every distribution kernel: no notice.
    quiet: bool = False


HOOKS: tuple[Hook, ...] = (
    Hook("kprobe", "__request_module", "req_enter", "every request, even rejected ones"),
    Hook("kretprobe", "__request_module", "req_exit", "request return values"),
    Hook("tracepoint", "module:module_request", "", "formatted request names"),
    Hook("kprobe", "call_usermodehelper_exec", "umh_enter", "modprobe spawns"),
    Hook("kretprobe", "call_usermodehelper_exec", "umh_exit", "modprobe spawn results"),
    Hook("kprobe", "call_usermodehelper_exec_async", "umh_spawn", "modprobe pids"),
    Hook("kprobe", "do_exit", "helper_exit", "modprobe exit status"),
    Hook("tracepoint", "syscalls:sys_enter_finit_module", "", "finit_module calls"),
    Hook("tracepoint", "syscalls:sys_exit_finit_module", "", "finit_module results"),
    Hook("tracepoint", "syscalls:sys_enter_init_module", "", "init_module calls"),
    Hook("tracepoint", "syscalls:sys_exit_init_module", "", "init_module results"),
    Hook("kprobe", "find_module_all", "find_module", "names of failed loads"),
    Hook("tracepoint", "module:module_load", "", "modules formed"),
    Hook("kprobe", "do_init_module", "modinit_enter", "init start"),
    Hook("kretprobe", "do_init_module", "modinit_exit", "init result"),
    Hook("tracepoint", "module:module_free", "", "modules freed"),
    Hook("tracepoint", "syscalls:sys_enter_sendmsg", "", "the device of each udev load"),
    Hook("kprobe", "module_sig_check", "sig_check_enter", "module length without signature"),
    Hook("kretprobe", "module_sig_check", "sig_check_exit", "module length without signature"),
    Hook("kprobe", "kmod_dup_request_exists_wait", "dup_check_enter", "kernel dup verdicts",
         quiet=True),
    Hook("kretprobe", "kmod_dup_request_exists_wait", "dup_check_exit", "kernel dup verdicts",
         quiet=True),
    Hook("kprobe", "kmod_dup_request_announce", "dup_announce", "kernel dup announces",
         quiet=True),
    Hook("kprobe", "module_patient_check_exists", "patient_check",
         "which same-name check refused a load", quiet=True),
)


def program_text() -> str:
    """The BPF program as bcc compiles it (before the -D options): what --ebpf prints."""
    return c_definitions() + BPF_SOURCE.read_text()


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise TracerError(
            "bcc is not importable: install Debian's python3-bpfcc and run with "
            "/usr/bin/python3 or a venv made with --system-site-packages"
        ) from e
    return bcc


@dataclass(frozen=True, slots=True)
class Attached:
    """What Tracer.attach() did: complete when it returns."""

    hooks: list[Hook]
    skipped: list[tuple[Hook, str]]
    features: kernel.Features
    attach_s: float

    def hook_names(self) -> list[str]:
        return [f"{h.probe_type}:{h.target}" for h in self.hooks]


class Tracer:
    """Owns the BPF object; call attach(), then poll() until done, then close()."""

    def __init__(
        self,
        on_event: Callable[[Event], None],
        notice: Callable[[str], None],
        maxactive: int = DEFAULT_MAXACTIVE,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
    ) -> None:
        self.on_event = on_event
        self.notice = notice
        self.maxactive = maxactive
        self.ringbuf_pages = ringbuf_pages
        self.bpf: Any = None
        self._hooks: list[Hook] = []
        self._skipped: list[tuple[Hook, str]] = []

    def attach(self) -> Attached:
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise TracerError("kmodtrace must run as root (it loads BPF programs)")
        try:
            kernel.check_traceable()
        except kernel.KernelUnsupported as e:
            raise TracerError(str(e)) from e
        bcc = _import_bcc()
        if not kernel.kernel_headers_present():
            raise TracerError(
                f"kernel headers for {platform.release()} are missing: install "
                f"linux-headers-{platform.release()}"
            )
        BPF = bcc.BPF

        def has_symbol(name: str) -> bool:
            try:
                return bool(BPF.ksymname(name) != -1)
            except Exception:  # noqa: BLE001 - unreadable kallsyms means "absent"
                return False

        def has_tracepoint(target: str) -> bool:
            cat, ev = target.split(":")
            try:
                return bool(BPF.tracepoint_exists(cat, ev))
            except Exception:  # noqa: BLE001 - bcc raises bare exceptions
                return False

        features = kernel.detect(has_symbol)
        cflags = [
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMAX_HELPERS={max(self.maxactive * 4, 1024)}",
            "-w",  # kernel headers trip clang warnings that bury our own messages
            f"-DLOAD_INFO_LEN_OFFSET={kernel.load_info_len_offset(self._struct_has_field)}",
        ]
        kprobes: list[Hook] = []
        for hook in HOOKS:
            if hook.probe_type == "tracepoint":
                if has_tracepoint(hook.target):
                    cflags.append(f"-DHAVE_TP_{hook.target.split(':')[1].upper()}")
                    self._hooks.append(hook)
                else:
                    self._skip(hook, "tracepoint not in this kernel")
            elif has_symbol(hook.target):
                kprobes.append(hook)
            else:
                self._skip(hook, "symbol not in this kernel (inlined or absent)")
        try:
            self.bpf = BPF(text=program_text(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception on compile failure
            raise TracerError(f"BPF program failed to compile: {e}") from e
        for hook in kprobes:
            try:
                if hook.probe_type == "kretprobe":
                    self.bpf.attach_kretprobe(
                        event=hook.target, fn_name=hook.fn, maxactive=self.maxactive
                    )
                else:
                    self.bpf.attach_kprobe(event=hook.target, fn_name=hook.fn)
                self._hooks.append(hook)
            except Exception as e:  # noqa: BLE001 - one failed hook must not stop the rest
                self._skip(hook, f"attach failed: {e}")
        if not any(h.target == "__request_module" for h in self._hooks) and not any(
            "finit_module" in h.target for h in self._hooks
        ):
            raise TracerError("neither __request_module nor finit_module can be traced")
        self.bpf["events"].open_ring_buffer(self._callback)
        return Attached(list(self._hooks), list(self._skipped), features,
                        time.monotonic() - t0)

    @staticmethod
    def _struct_has_field(struct: str, field: str) -> bool | None:
        """From the kernel's BTF; None where there is none to ask."""
        try:
            import bcc

            found = bcc.BPF.kernel_struct_has_field(struct.encode(), field.encode())
        except Exception:  # noqa: BLE001 - no BTF, or a bcc without the call
            return None
        return None if found < 0 else bool(found)

    def _skip(self, hook: Hook, why: str) -> None:
        self._skipped.append((hook, why))
        if not hook.quiet:
            self.notice(f"skipping {hook.probe_type} {hook.target} ({hook.why}): {why}")

    def _callback(self, _ctx: Any, data: Any, _size: int) -> None:
        self.on_event(decode(data))

    def poll(self, timeout_ms: int = 100) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self.bpf.ring_buffer_consume()

    def lost(self) -> int:
        """Events dropped because the ring buffer was full."""
        if self.bpf is None:
            return 0
        return int(self.bpf["lost"].sum(ctypes.c_int(0)).value)

    def missed(self) -> int:
        """kretprobe instances missed (maxactive exhausted), from kprobe_profile."""
        root = kernel.tracefs()
        if root is None:
            return 0
        tag = f"_bcc_{os.getpid()}"
        total = 0
        try:
            with open(os.path.join(root, "kprobe_profile")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and tag in parts[0]:
                        total += int(parts[2])
        except OSError:
            return 0
        return total

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
