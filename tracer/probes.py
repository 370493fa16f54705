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

from tracer import btf as btfmod
from tracer import kernel
from tracer.events import Event, c_definitions, decode

# Package data, found the way bcc finds its helpers.h: it ships inside the wheel.
BPF_SOURCE = resources.files("tracer") / "bpf" / "kmodtrace.bpf.c"
# The kernel tree bcc compiles in where BTF gives every offset (BCC_KERNEL_SOURCE):
# bcc's helpers.h needs a dozen lines of it, not the linux-headers package.
NOHDR_TREE = resources.files("tracer") / "bpf" / "nohdr"
# How the program gets its struct offsets; KMODTRACE_BUILD forces one (bench measures
# each): "btf" (BTF, no kernel headers), "btf-headers" (BTF, compiled in the kernel
# headers' tree), "headers" (offsetof() over the kernel headers, no BTF needed).
BUILDS = ("btf", "btf-headers", "headers")

# Every sleeping __request_module call holds a kretprobe instance; storms on big
# machines put thousands in flight (the kernel default is 2 * NR_CPUS).
DEFAULT_MAXACTIVE = 4096
# 64 MiB: ~225 000 events of 296 bytes before the consumer must catch up.
DEFAULT_RINGBUF_PAGES = 16384


class TracerError(RuntimeError):
    """A one-line, user-facing reason the tracer cannot run."""


@dataclass(frozen=True, slots=True)
class Hook:
    probe_type: str  # "kprobe", "kretprobe", "tracepoint" or "kretfunc" (fexit)
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
# Not attached by name: bcc attaches the program's kretfunc__down_timeout as it compiles.
RESCUE_HOOK = Hook("kretfunc", "down_timeout", "kretfunc__down_timeout",
                   "returns of requests that time out in the kmod throttle")


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
    build: str  # one of BUILDS: where the struct offsets came from
    phases: dict[str, float]  # seconds per step of attach(), for kmodtrace bench

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
        phases = {"import": time.monotonic() - t0}
        build, cflags = Tracer._build_flags()
        phases["offsets"] = time.monotonic() - t0 - sum(phases.values())
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
        cflags += [
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMAX_HELPERS={max(self.maxactive * 4, 1024)}",
            "-w",  # kernel headers trip clang warnings that bury our own messages
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
        rescue = self._throttle_rescue(BPF, has_symbol)
        phases["probe-checks"] = time.monotonic() - t0 - sum(phases.values())
        try:
            self.bpf = self._compile(BPF, build, cflags + rescue)
        except TracerError as e:
            if not rescue:
                raise
            # bcc attaches the fexit while compiling: a kernel that refuses it still
            # gets every other hook
            self._skip(RESCUE_HOOK, f"fexit failed: {e}")
            self.bpf = self._compile(BPF, build, cflags)
            rescue = []
        if rescue:
            self._hooks.append(RESCUE_HOOK)
        phases["compile"] = time.monotonic() - t0 - sum(phases.values())
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
        phases["attach"] = time.monotonic() - t0 - sum(phases.values())
        return Attached(list(self._hooks), list(self._skipped), features,
                        time.monotonic() - t0, build, phases)

    @staticmethod
    def _throttle_rescue(BPF: Any, has_symbol: Callable[[str], bool]) -> list[str]:
        """-DKMOD_SEM=address of kmod_concurrent_max (kernel/module/kmod.c, in kallsyms
        with CONFIG_KALLSYMS_ALL) where the kernel has BPF trampolines (fexit) and
        down_timeout; else no flag, and no fexit (see the program's inreq)."""
        try:
            if not BPF.support_kfunc() or not has_symbol("down_timeout"):
                return []
        except Exception:  # noqa: BLE001 - bcc raises bare exceptions
            return []
        addr = kernel.kallsyms_address("kmod_concurrent_max")
        return [f"-DKMOD_SEM={addr:#x}ULL"] if addr else []

    @staticmethod
    def _build_flags(release: str | None = None,
                     btf_path: str = btfmod.VMLINUX_BTF) -> tuple[str, list[str]]:
        """Which build (BUILDS) this kernel allows, and its cflags: the offsets and the
        version code. BTF first: it needs no kernel headers and compiles in a fraction of
        the time."""
        release = release or platform.release()
        forced = os.environ.get("KMODTRACE_BUILD", "")
        if forced and forced not in BUILDS:
            raise TracerError(f"KMODTRACE_BUILD={forced} is not a build "
                              f"(fix: one of {', '.join(BUILDS)}, or unset it)")
        btf: btfmod.BTF | None = None
        offsets: dict[str, object] = {}
        why = ""
        try:
            btf = btfmod.load(btf_path)
            offsets = dict(kernel.btf_offsets(btf))
        except btfmod.BTFError as e:
            btf, why = None, str(e)
        headers = kernel.kernel_headers_present(release)
        if btf is None and not headers:
            raise TracerError(
                f"kernel headers for {release} are missing and the kernel has no usable BTF "
                f"({why}) (fix: install linux-headers-{release}, or use a kernel built with "
                f"CONFIG_DEBUG_INFO_BTF=y, which provides {btfmod.VMLINUX_BTF})")
        if btf is not None and platform.machine() != "x86_64" and not forced:
            forced = "btf-headers"  # tracer/bpf/nohdr's struct pt_regs is x86-64's
        build = forced or ("btf" if btf is not None else "headers")
        if build != "headers" and btf is None:
            raise TracerError(f"kernel {release} has no usable BTF ({why}) "
                              f"(fix: unset KMODTRACE_BUILD={build})")
        if build != "btf" and not headers:
            raise TracerError(f"kernel headers for {release} are missing (fix: install "
                              f"linux-headers-{release}, or unset KMODTRACE_BUILD={build})")
        cflags = []
        if build == "headers":
            offsets = dict(kernel.header_offsets(
                btf.has_field if btf is not None else lambda s, f: None))
            cflags.append("-DKMT_KERNEL_HEADERS")
        if build == "btf":
            cflags.append(f"-DLINUX_VERSION_CODE={kernel.version_code(release)}")
        cflags += [f"-D{macro}={value}" for macro, value in offsets.items()]
        return build, cflags

    @staticmethod
    def _compile(BPF: Any, build: str, cflags: list[str]) -> Any:
        """bcc compiles in BCC_KERNEL_SOURCE if set (read at compile time): the nohdr
        tree for the btf build."""
        saved = os.environ.get("BCC_KERNEL_SOURCE")
        if build == "btf":
            os.environ["BCC_KERNEL_SOURCE"] = str(NOHDR_TREE)
        try:
            return BPF(text=program_text(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception on compile failure
            raise TracerError(f"BPF program failed to compile ({build} build): {e}") from e
        finally:
            if saved is None:
                os.environ.pop("BCC_KERNEL_SOURCE", None)
            else:
                os.environ["BCC_KERNEL_SOURCE"] = saved

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
        """Returns no hook saw: kretprobe instances missed (maxactive exhausted), from
        kprobe_profile, less the __request_module returns the down_timeout fexit saw
        for threads the kretprobe missed (rescued - those the kretprobe saw too)."""
        root = kernel.tracefs()
        if root is None:
            return 0
        tag = f"_bcc_{os.getpid()}"
        total = req = 0
        try:
            with open(os.path.join(root, "kprobe_profile")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and tag in parts[0]:
                        total += int(parts[2])
                        if parts[0] == f"r___request_module{tag}":
                            req = int(parts[2])
        except OSError:
            return 0
        rescued, seen_too = self.rescued()
        return total - min(req, rescued - seen_too)

    def rescued(self) -> tuple[int, int]:
        """(__request_module returns the down_timeout fexit emitted, of which the
        kretprobe saw too)."""
        if self.bpf is None:
            return 0, 0
        table = self.bpf["rescue"]
        return (int(table[ctypes.c_int(0)].value), int(table[ctypes.c_int(1)].value))

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
