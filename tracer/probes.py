"""Compile tracer/bpf/kmodtrace.bpf.c with bcc, attach what this kernel has, stream events.

The only module that imports bcc. A hook the kernel lacks is skipped with a
notice; counters for lost events (failed ring-buffer reservations) and each hook's
misses (kretprobe instances, programs the kernel skipped) are read back so that nothing
is dropped silently.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer import btf as btfmod
from tracer import callsites, kernel, misses
from tracer.errors import TracerError
from tracer.events import Event, c_definitions, decode

# Package data, found the way bcc finds its helpers.h: it ships inside the wheel.
# (next to this module: importlib.resources costs an import at every start, and a wheel
# installs its files unpacked)
BPF_SOURCE = Path(__file__).with_name("bpf") / "kmodtrace.bpf.c"
# The kernel tree bcc compiles in where BTF gives every offset (BCC_KERNEL_SOURCE):
# bcc's helpers.h needs a dozen lines of it, not the linux-headers package.
NOHDR_TREE = Path(__file__).with_name("bpf") / "nohdr"
# How the program gets its struct offsets; KMODTRACE_BUILD forces one (bench measures
# each): "btf" (BTF, no kernel headers), "btf-headers" (BTF, compiled in the kernel
# headers' tree), "headers" (offsetof() over the kernel headers, no BTF needed).
BUILDS = ("btf", "btf-headers", "headers")

# Every sleeping __request_module call holds a kretprobe instance; storms on big
# machines put thousands in flight (the kernel default is 2 * NR_CPUS).
DEFAULT_MAXACTIVE = 4096
# 64 MiB: ~225 000 events of 296 bytes before the consumer must catch up.
DEFAULT_RINGBUF_PAGES = 16384
# Records one poll hands over at most. A storm's backlog is otherwise taken whole: a
# 10 000-thread storm left 20 000 records, all decoded and held at once (and their trace
# lines buffered, 3 MB), which raised the recorder's heap for good (issue #14).
DEFAULT_BATCH = 1024


class _Background:
    """FN run in a thread; result() waits and returns it, or raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self.run_s = 0.0  # how long FN ran
        self.waited_s = 0.0  # how long result() waited for it
        self._thread = threading.Thread(target=self._run, name="kmodtrace-compile",
                                         daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to result()'s caller
            self._error = e
        self.run_s = time.monotonic() - t0

    def result(self) -> Any:
        t0 = time.monotonic()
        self._thread.join()
        self.waited_s = time.monotonic() - t0
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(frozen=True, slots=True)
class Hook:
    probe_type: str  # "kprobe", "kretprobe", "tracepoint", "kfunc" (fentry), "kretfunc"
    target: str  # symbol, or "category:event"
    fn: str  # BPF function (kprobes) or HAVE_TP_ macro suffix (tracepoints)
    why: str
    # Debug-only hooks (dups.c) are absent from every distribution kernel: no notice.
    quiet: bool = False

    @property
    def name(self) -> str:
        """How a trace's header lists it: "kprobe:__request_module"."""
        return f"{self.probe_type}:{self.target}"


# Where dups.c is built in, requests reach kmod_dup_mutex in the order of this kprobe;
# session.py orders the model's arrivals by it wherever it was attached.
DUP_ENTER_HOOK = Hook("kprobe", "kmod_dup_request_exists_wait", "dup_check_enter",
                      "kernel dup verdicts", quiet=True)

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
    DUP_ENTER_HOOK,
    Hook("kretprobe", "kmod_dup_request_exists_wait", "dup_check_exit", "kernel dup verdicts",
         quiet=True),
    Hook("kprobe", "kmod_dup_request_announce", "dup_announce", "kernel dup announces",
         quiet=True),
    Hook("kprobe", "module_patient_check_exists", "patient_check",
         "which same-name check refused a load", quiet=True),
)
# Not attached by name: bcc attaches the program's kretfunc__FUNCTION as it compiles.
# Only the throttle semaphore has one (tracer/bpf: KMOD_SEM).
RESCUE_HOOK = Hook("kretfunc", "down_timeout", "kretfunc__down_timeout",
                   "returns of requests that time out in the kmod throttle")


def _bpf_function(hook: Hook) -> str:
    """The name bcc gives HOOK's BPF function: TRACEPOINT_PROBE(cat, ev) defines
    tracepoint__cat__ev; the others are named in the hook."""
    if hook.probe_type == "tracepoint":
        return "tracepoint__" + hook.target.replace(":", "__")
    return hook.fn


def syscall_twin(hook: Hook, kprobes: bool = False) -> tuple[Hook, str] | None:
    """The BPF trampoline that stands in for a syscalls:sys_{enter,exit}_NAME tracepoint
    hook of kernel.TRAMPOLINED_SYSCALLS, with the -D flag that compiles it in; bcc
    attaches it as it compiles (its kfunc__/kretfunc__ name). KPROBES (trampolines can
    be preempted here): a kprobe/kretprobe on the same wrapper instead, for
    kernel.KPROBED_SYSCALLS, attached by attach()."""
    category, _, event = hook.target.partition(":")
    phase, _, name = event.removeprefix("sys_").partition("_")
    if category != "syscalls" or name not in kernel.TRAMPOLINED_SYSCALLS:
        return None
    wrapper = kernel.syscall_wrapper(name)
    if kprobes and name in kernel.KPROBED_SYSCALLS:
        probe = "kprobe" if phase == "enter" else "kretprobe"
        fn = f"sys_{name}_{'enter' if phase == 'enter' else 'exit'}"
        return Hook(probe, wrapper, fn, hook.why), f"-DSYS_KPROBE_{name.upper()}"
    kind, flag = ("kfunc", "FENTRY") if phase == "enter" else ("kretfunc", "FEXIT")
    return (Hook(kind, wrapper, f"{kind}__{wrapper}", hook.why),
            f"-DSYS_{flag}_{name.upper()}")


def program_text() -> str:
    """The BPF program as bcc compiles it (before the -D options): what --ebpf prints."""
    return c_definitions() + kernel.offset_definitions() + BPF_SOURCE.read_text()


def env_maxactive() -> int:
    """The kretprobes' instances: KMODTRACE_MAXACTIVE, else DEFAULT_MAXACTIVE (the kernel's
    cap). Fewer make requests beyond them easy to cause: how the hooks that need no
    instance are tested."""
    raw = os.environ.get("KMODTRACE_MAXACTIVE", "")
    if not raw:
        return DEFAULT_MAXACTIVE
    if not raw.isdigit() or not 1 <= int(raw) <= DEFAULT_MAXACTIVE:
        raise TracerError(f"KMODTRACE_MAXACTIVE={raw} is not a number of kretprobe "
                          f"instances (fix: 1 to {DEFAULT_MAXACTIVE}, or unset it)")
    return int(raw)


def env_force_trampolines() -> bool:
    """KMODTRACE_TRAMPOLINES=1 keeps the module syscalls' fentry/fexit even where they
    can be preempted and miss (kernel.preemption): how the tests show those misses."""
    return os.environ.get("KMODTRACE_TRAMPOLINES", "") == "1"


def env_trampolines() -> bool:
    """KMODTRACE_TRAMPOLINES=0 hooks as on a kernel without BPF trampolines: the module
    syscalls by their tracepoints, no throttle fexit (how the tests reach that build)."""
    raw = os.environ.get("KMODTRACE_TRAMPOLINES", "")
    if raw not in ("", "0", "1"):
        raise TracerError(f"KMODTRACE_TRAMPOLINES={raw} is neither 0 nor 1 "
                          f"(fix: 0 for the tracepoints, or unset it)")
    return raw != "0"


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise TracerError(
            "bcc is not importable: install Debian's python3-bpfcc and run with "
            "/usr/bin/python3 or a venv made with --system-site-packages"
        ) from e
    return bcc


@dataclass(slots=True)
class _Trampolines:
    """The BPF trampolines begin() compiles in, and what stands in if bcc fails them."""

    hook: Hook | None = None  # the throttle fexit (RESCUE_HOOK)
    flags: list[str] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)  # the syscalls' fentry/fexit
    fallback_flags: list[str] = field(default_factory=list)  # their tracepoints'
    fallback_hooks: list[Hook] = field(default_factory=list)


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
        return [h.name for h in self.hooks]


class Tracer:
    """Owns the BPF object; call attach(), then poll() until done, then close()."""

    def __init__(
        self,
        on_event: Callable[[Event], None],
        notice: Callable[[str], None],
        maxactive: int | None = None,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.on_event = on_event
        self.notice = notice
        self.maxactive = maxactive if maxactive is not None else env_maxactive()
        self.ringbuf_pages = ringbuf_pages
        self.batch = batch
        self._taken = 0  # records handed over by this poll() or consume()
        self.bpf: Any = None
        self._hooks: list[Hook] = []
        self._skipped: list[tuple[Hook, str]] = []
        self.begin_ns = 0  # CLOCK_MONOTONIC when begin() started: events may come after
        self._compiling: _Background | None = None
        self._phases: dict[str, float] = {}
        self._features: kernel.Features | None = None
        self._kprobes: list[Hook] = []
        self._build = ""
        self._sites: dict[int, int] = {}  # req_site's return addresses -> perf fd
        self._watched: dict[int, None] = {}  # every address ever watched, in order
        self._scanned: dict[int, None] = {}  # those found in a module's code as it loaded
        self._site_fn: Any = None  # req_site, loaded by attach()
        self._request_module = 0  # __request_module's address: the calls to look for
        self._kcore: callsites.Kcore | bool | None = None  # False: cannot be read

    def begin(self) -> None:
        """Check the kernel and start compiling the program in the background (errors as
        TracerError at once): a caller imports and sets up the rest meanwhile; attach()
        finishes. bcc attaches the tracepoints and trampolines as it compiles, so events
        can come from here on (the BPF side holds them back until attach() fills in the
        offsets)."""
        self.begin_ns = time.monotonic_ns()
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise TracerError("kmodtrace must run as root (it loads BPF programs)")
        try:
            kernel.check_traceable()
        except kernel.KernelUnsupported as e:
            raise TracerError(str(e)) from e
        bcc = _import_bcc()
        phases = self._phases = {"import": time.monotonic() - t0}
        build, cflags = Tracer._build_flags()
        BPF = bcc.BPF

        syms = kernel.kallsyms_lookup(
            [h.target for h in HOOKS if h.probe_type != "tracepoint"]
            + [kernel.syscall_wrapper(n) for n in kernel.TRAMPOLINED_SYSCALLS]
            + list(kernel.DETECTED_SYMBOLS) + list(kernel.THROTTLE_SYMBOLS)
            + list(kernel.PREEMPT_SYMBOLS))

        def has_symbol(name: str) -> bool:
            return kernel.is_function(syms.get(name))

        def has_tracepoint(target: str) -> bool:
            cat, ev = target.split(":")
            try:
                return bool(BPF.tracepoint_exists(cat, ev))
            except Exception:  # noqa: BLE001 - bcc raises bare exceptions
                return False

        self._features = kernel.detect(has_symbol, self._btf_has_field(btfmod.VMLINUX_BTF))
        self._request_module = (syms.get("__request_module") or ("", 0))[1]
        cflags += [
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMAX_HELPERS={max(self.maxactive * 4, 1024)}",
            "-w",  # kernel headers trip clang warnings that bury our own messages
        ]
        self._kprobes = []
        # BPF trampolines where the kernel has them: the throttle fexit, and the module
        # syscalls in place of their tracepoints (kept as the fallback if bcc fails them)
        trampolines = env_trampolines() and kernel.has_fexit(syms)
        tramp = _Trampolines()
        if trampolines:
            tramp.hook, tramp.flags = self._throttle_rescue(syms)
        # where a trampoline can be preempted, the module syscalls by kprobe (kernel.py)
        preempted = False
        if trampolines and not env_force_trampolines():
            preempted, model = kernel.preemption(syms, self._read_kernel)
            if preempted:
                self.notice(f"BPF trampolines can be preempted and skip here (preemption: "
                            f"{model}): module syscalls hooked by kprobe/kretprobe")
        for hook in HOOKS:
            if hook.probe_type == "tracepoint":
                tp_flag = f"-DHAVE_TP_{hook.target.split(':')[1].upper()}"
                tp_ok = has_tracepoint(hook.target)
                twin = syscall_twin(hook, preempted) if trampolines else None
                if twin is not None and twin[0].probe_type.endswith("probe"):
                    if has_symbol(twin[0].target):
                        self._kprobes.append(twin[0])
                        cflags += [twin[1]] if twin[1] not in cflags else []
                        continue
                    twin = None
                if twin is not None and has_symbol(twin[0].target):
                    tramp.hooks.append(twin[0])
                    tramp.flags.append(twin[1])
                    if tp_ok:
                        tramp.fallback_hooks.append(hook)
                        tramp.fallback_flags.append(tp_flag)
                elif tp_ok:
                    cflags.append(tp_flag)
                    self._hooks.append(hook)
                else:
                    self._skip(hook, "tracepoint not in this kernel")
            elif has_symbol(hook.target):
                self._kprobes.append(hook)
            else:
                self._skip(hook, "symbol not in this kernel (inlined or absent)")
        phases["probe-checks"] = time.monotonic() - t0 - sum(phases.values())
        self._build = build
        # clang runs without the GIL: the caller's imports and BTF run while bcc compiles
        self._compiling = _Background(lambda: self._compile_trampolines(
            BPF, build, cflags, tramp))

    def attach(self) -> Attached:
        """Finish what begin() started (calling it first if not yet): the offsets, the
        kprobes, the ring buffer. Complete when it returns."""
        if self._compiling is None:
            self.begin()
        assert self._compiling is not None
        t_offsets = time.monotonic()
        try:
            offsets = Tracer._btf_offsets() if self._build != "headers" else {}
        finally:
            self.bpf = self._compiling.result()
        phases = self._phases
        phases["offsets"] = time.monotonic() - t_offsets - self._compiling.waited_s
        phases["compile"] = self._compiling.run_s
        self._fill_offsets(offsets)
        t_attach = time.monotonic()
        for hook in self._kprobes:
            try:
                if hook.probe_type == "kretprobe":
                    self.bpf.attach_kretprobe(
                        event=hook.target, fn_name=hook.fn, maxactive=self.maxactive
                    )
                else:
                    self._attach_kprobe(hook)
                self._hooks.append(hook)
            except Exception as e:  # noqa: BLE001 - one failed hook must not stop the rest
                self._skip(hook, f"attach failed: {e}")
        if not any(h.target == "__request_module" for h in self._hooks) and not any(
            "finit_module" in h.target for h in self._hooks
        ):
            raise TracerError("neither __request_module nor finit_module can be traced")
        self._load_site_fn()
        self.bpf["events"].open_ring_buffer(self._callback)
        phases["attach"] = time.monotonic() - t_attach
        assert self._features is not None
        return Attached(list(self._hooks), list(self._skipped), self._features,
                        (time.monotonic_ns() - self.begin_ns) / 1e9, self._build, phases)

    def _attach_kprobe(self, hook: Hook) -> None:
        """HOOK's entry kprobe, made through tracefs's kprobe_events, so that
        kprobe_profile shows its nmissed (misses()): bcc's attach_kprobe() makes it with
        the perf kprobe PMU, whose misses nothing shows. libbcc takes that path for a
        probe given instances (maxactive), which an entry probe does not use. Where
        tracefs refuses, bcc's own way."""
        bcc = _import_bcc()
        fn = self.bpf.load_func(hook.fn.encode(), bcc.BPF.KPROBE)
        event = hook.target.encode()
        ev_name = b"p_" + event.replace(b"+", b"_").replace(b".", b"_")
        fd = bcc.libbcc.lib.bpf_attach_kprobe(fn.fd, 0, ev_name, event, 0, 1)
        if fd < 0:
            self.bpf.attach_kprobe(event=hook.target, fn_name=hook.fn)
            return
        self.bpf._add_kprobe_fd(ev_name, hook.fn.encode(), fd)  # bcc's cleanup() detaches it

    def _compile_trampolines(self, BPF: Any, build: str, cflags: list[str],
                             tramp: _Trampolines) -> Any:
        """The program with its BPF trampolines; bcc attaches them while compiling, and
        if the kernel refuses one, the program without any: the syscalls by tracepoint,
        no throttle fexit, every other hook still there."""
        try:
            bpf = self._compile(BPF, build, cflags + tramp.flags)
        except TracerError as e:
            if not tramp.flags:
                raise
            if tramp.hook is not None:
                self._skip(tramp.hook, f"fexit failed: {e}")
            for hook in tramp.hooks:
                self._skip(hook, f"BPF trampoline failed, its tracepoint stands in: {e}")
            self._hooks += tramp.fallback_hooks
            return self._compile(BPF, build, cflags + tramp.fallback_flags)
        self._hooks += tramp.hooks
        if tramp.hook is not None:
            self._hooks.append(tramp.hook)
        return bpf

    def _fill_offsets(self, offsets: dict[str, int]) -> None:
        """The BTF builds' struct offsets into kmt_off, then its ready slot: the program
        emits events from then on."""
        table = self.bpf["kmt_off"]
        for i, (macro, _struct, _path) in enumerate(kernel.OFFSETS):
            if macro in offsets:
                table[ctypes.c_int(i)] = ctypes.c_uint32(offsets[macro])
        table[ctypes.c_int(len(kernel.OFFSETS))] = ctypes.c_uint32(1)

    @staticmethod
    def _btf_has_field(btf_path: str) -> Callable[[str, str], bool | None]:
        """BTF's has_field, or "cannot say" where there is no usable BTF (load_info's
        usual layout then, kernel.load_info_len_offset). BTF is read on the first question
        (only some kernels need one) and once."""
        loaded: list[Callable[[str, str], bool | None]] = []

        def has_field(struct_name: str, field: str) -> bool | None:
            if not loaded:
                try:
                    loaded.append(btfmod.load(btf_path).has_field)
                except btfmod.BTFError:
                    loaded.append(lambda _s, _f: None)
            return loaded[0](struct_name, field)
        return has_field

    @staticmethod
    def _btf_offsets(btf_path: str = btfmod.VMLINUX_BTF) -> dict[str, int]:
        try:
            return kernel.btf_offsets(btfmod.load(btf_path))
        except btfmod.BTFError as e:
            release = platform.release()
            raise TracerError(
                f"the kernel's BTF ({btf_path}) is not usable: {e} (fix: install "
                f"linux-headers-{release} and set KMODTRACE_BUILD=headers)") from e

    @staticmethod
    def _throttle_rescue(syms: dict[str, tuple[str, int]]) -> tuple[Hook | None, list[str]]:
        """The cflags of the fexit that sees requests time out in the kmod throttle
        semaphore (kernel.throttle_form; the program's inreq): -DKMOD_SEM = the address
        of kmod_concurrent_max, and -ETIME's value; with the hook. None where the kernel
        has no BPF trampolines, waits on kmod_wq, or kallsyms hides the throttle."""
        found = kernel.throttle_form(syms)
        if found is None or found[0] != "semaphore" or not kernel.has_fexit(syms):
            return None, []
        return RESCUE_HOOK, [f"-DKMOD_SEM={found[1]:#x}ULL", f"-DKMOD_ETIME={errno.ETIME}"]

    @staticmethod
    def _build_flags(release: str | None = None,
                     btf_path: str = btfmod.VMLINUX_BTF) -> tuple[str, list[str]]:
        """Which build (BUILDS) this kernel allows, and its cflags. BTF first: it needs no
        kernel headers and compiles in a fraction of the time. Decided from what exists;
        the BTF builds' offsets are parsed while the program compiles (attach())."""
        release = release or platform.release()
        forced = os.environ.get("KMODTRACE_BUILD", "")
        if forced and forced not in BUILDS:
            raise TracerError(f"KMODTRACE_BUILD={forced} is not a build "
                              f"(fix: one of {', '.join(BUILDS)}, or unset it)")
        has_btf = os.path.exists(btf_path)
        headers = kernel.kernel_headers_present(release)
        if not has_btf and not headers:
            raise TracerError(
                f"kernel headers for {release} are missing and the kernel has no BTF "
                f"(no {btf_path}) (fix: install linux-headers-{release}, or use a kernel "
                f"built with CONFIG_DEBUG_INFO_BTF=y, which provides {btfmod.VMLINUX_BTF})")
        if has_btf and platform.machine() != "x86_64" and not forced:
            forced = "btf-headers"  # tracer/bpf/nohdr's struct pt_regs is x86-64's
        build = forced or ("btf" if has_btf else "headers")
        if build != "headers" and not has_btf:
            raise TracerError(f"kernel {release} has no BTF (no {btf_path}) "
                              f"(fix: unset KMODTRACE_BUILD={build})")
        if build != "btf" and not headers:
            raise TracerError(f"kernel headers for {release} are missing (fix: install "
                              f"linux-headers-{release}, or unset KMODTRACE_BUILD={build})")
        cflags = []
        if build == "headers":
            cflags.append("-DKMT_KERNEL_HEADERS")
            cflags += [f"-D{m}={v}" for m, v in
                       kernel.header_offsets(Tracer._btf_has_field(btf_path)).items()]
        if build == "btf":
            cflags.append(f"-DLINUX_VERSION_CODE={kernel.version_code(release)}")
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

    def _callback(self, _ctx: Any, data: Any, _size: int) -> int:
        self.on_event(decode(data))
        self._taken += 1
        # bcc passes the return on to libbpf, which stops at a negative one: this record
        # is consumed, the rest stay in the ring for the next call
        return -1 if self._taken >= self.batch else 0

    def consume(self) -> bool:
        """Hand over what the ring buffer holds, at most `batch` records, without waiting
        (the program wakes no reader: tracer/live.py TICK_S): True if it stopped there
        (more may wait)."""
        self._taken = 0
        self.bpf.ring_buffer_consume()
        return self._taken >= self.batch

    def drain(self) -> None:
        """Everything the ring buffer holds, batch after batch."""
        while self.consume():
            pass

    def lost(self) -> int:
        """Events dropped because the ring buffer was full."""
        if self.bpf is None:
            return 0
        return int(self.bpf["lost"].sum(ctypes.c_int(0)).value)

    def missed(self, found: dict[str, int] | None = None) -> int:
        """Hook runs the kernel skipped (FOUND, else misses() now), less the
        __request_module returns a rescue emitted for threads the kretprobe missed
        (emitted - those the kretprobe saw too - wrong)."""
        if found is None:
            found = self.misses()
        emitted, seen_too, wrong = self.rescued()
        req = found.get("kretprobe:__request_module", 0)
        return sum(found.values()) - min(req, emitted - seen_too - wrong)

    def misses(self) -> dict[str, int]:
        """Each hook's skipped runs, by hook name (kretprobe:do_init_module), those with
        none left out: kprobe nmissed (kprobe_profile: kretprobe instances exhausted) and
        every program's recursion_misses (tracer/misses.py: a preempted trampoline
        program, or one that trace_call_bpf() skipped)."""
        found: dict[str, int] = {}
        tag = f"_bcc_{os.getpid()}"
        root = kernel.tracefs()
        if root is not None:
            try:
                with open(os.path.join(root, "kprobe_profile")) as f:
                    profile = f.read()
            except OSError:
                profile = ""
            for event, n in misses.kprobe_profile(profile, tag).items():
                if n:
                    hook = misses.kprobe_hook(event, tag)
                    found[hook] = found.get(hook, 0) + n
        for name, n in self._prog_misses().items():
            if n:
                found[name] = found.get(name, 0) + n
        return found

    def _prog_misses(self) -> dict[str, int]:
        """recursion_misses of each loaded program, by the hook it serves (its BPF
        function's name where none does): BPF_OBJ_GET_INFO_BY_FD through libbcc."""
        if self.bpf is None:
            return {}
        by_fn = {_bpf_function(h): h.name for h in self._hooks}
        get_info = _import_bcc().libbcc.lib.bpf_obj_get_info
        get_info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        get_info.restype = ctypes.c_int
        found: dict[str, int] = {}
        for raw, fn in list(self.bpf.funcs.items()):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            buf = ctypes.create_string_buffer(misses.PROG_INFO_SIZE)
            size = ctypes.c_uint32(misses.PROG_INFO_SIZE)
            if get_info(fn.fd, buf, ctypes.byref(size)) != 0:
                continue
            n = misses.prog_misses(buf.raw, size.value)
            if n is not None:
                key = by_fn.get(name, name)
                found[key] = found.get(key, 0) + n
        return found

    def rescued(self) -> tuple[int, int, int]:
        """(__request_module returns a rescue emitted, of which the kretprobe saw
        too, of which were wrong: the thread went on to the tracepoint)."""
        if self.bpf is None:
            return 0, 0, 0
        table = self.bpf["rescue"]
        emitted, seen_too, wrong = (int(table[ctypes.c_int(i)].value) for i in range(3))
        return emitted, seen_too, wrong

    def watch_site(self, ret_addr: int, quiet: bool = False) -> bool:
        """Attach req_site at RET_ADDR, the return address of a call of __request_module
        (a REQ_ENTER's ip), once per address: it sees each return there that the
        kretprobe has no instance for. A kprobe by address (the perf kprobe PMU, with an
        empty function name): bcc's attach_kprobe names the probe after the function
        alone, which every site would share. True if it is watched."""
        if ret_addr in self._sites or not ret_addr or self.bpf is None:
            return self._sites.get(ret_addr, -1) >= 0
        self._sites[ret_addr] = -1
        if self._site_fn is None:
            return False
        lib = _import_bcc().libbcc.lib
        fd = lib.bpf_attach_kprobe(self._site_fn.fd, 0, f"p_kmt_{ret_addr:x}".encode(), b"",
                                   ret_addr, 0)
        if fd < 0:
            if not quiet:
                self.notice(f"cannot watch returns at {ret_addr:#x} (kprobe: "
                            f"{os.strerror(ctypes.get_errno() or errno.EINVAL)}): a request "
                            "from there that has no kretprobe instance goes unseen")
            return False
        self._sites[ret_addr] = fd
        self._watched[ret_addr] = None
        return True

    def _load_site_fn(self) -> None:
        """Load req_site once, with the other probes: loaded on a site's first request
        instead, mid-storm, a signal (py-spy's ptrace stop) made the verifier give up
        with EAGAIN, bcc raised, and the recorder died."""
        bcc = _import_bcc()
        try:
            self._site_fn = self.bpf.load_func(b"req_site", bcc.BPF.KPROBE)
        except Exception as e:  # noqa: BLE001 - bcc raises bare exceptions
            self._skip(Hook("kprobe", "(call sites)", "req_site",
                            "returns beyond the kretprobe's instances"), f"load failed: {e}")

    def watch_module(self, base: int, size: int) -> list[int]:
        """A module was loaded at [BASE, BASE+SIZE): watch the returns of its calls of
        __request_module (tracer/callsites.py), found in its code, before its init
        runs. Sites watched there before belong to a module gone since (their kprobes
        died with it): they go. The return addresses watched now."""
        if self.bpf is None:
            return []
        for addr in [a for a in self._sites if base <= a < base + size]:
            self._unwatch(addr)
        if not self._request_module:  # kallsyms hides addresses: nothing to look for
            return []
        code = self._read_kernel(base, size)
        if code is None:
            return []
        found = [a for a in callsites.call_returns(code, base, self._request_module)
                 if self.watch_site(a, quiet=True)]
        self._scanned.update(dict.fromkeys(found))
        return found

    def _unwatch(self, addr: int) -> None:
        fd = self._sites.pop(addr)
        if fd >= 0:
            _import_bcc().libbcc.lib.bpf_close_perf_event_fd(fd)

    def _read_kernel(self, addr: int, size: int) -> bytes | None:
        """SIZE bytes of kernel memory at ADDR from /proc/kcore; None where the kernel
        has none or withholds it (lockdown): sites are then watched on first sight."""
        if self._kcore is None:
            try:
                self._kcore = callsites.Kcore()
            except (OSError, ValueError) as e:
                self.notice(f"cannot read module code from {callsites.KCORE} ({e}): "
                            "a module's calls of __request_module are watched from its "
                            "first request on")
                self._kcore = False
        if not isinstance(self._kcore, callsites.Kcore):
            return None
        return self._kcore.read(addr, size)

    def sites(self) -> list[int]:
        """The return addresses req_site watched, in the order first attached (those of
        a module unloaded since included)."""
        return list(self._watched)

    def scanned_sites(self) -> list[int]:
        """Those of sites() found in a module's code as it loaded (watch_module)."""
        return list(self._scanned)

    def close(self) -> None:
        if self.bpf is not None:
            for addr in list(self._sites):
                self._unwatch(addr)
            if isinstance(self._kcore, callsites.Kcore):
                self._kcore.close()
            self._kcore = None
            self.bpf.cleanup()
            self.bpf = None
