"""Everything that differs between kernels, detected from the running kernel.

Detection uses symbols and tracepoints, never the version number; each check
names the kernel commit that introduced what it looks for. This module has no
bcc import so that the facts can be computed and tested anywhere; probes.py
feeds it bcc's lookups.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

from tracer.btf import BTF

if TYPE_CHECKING:
    from tracer.model import Announce, AnnounceSource, Profile

# tracer.model is imported where used: the tracer starts compiling its program (probes.py
# imports this module) before the model, which it needs only after, has been imported.

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class KernelUnsupported(RuntimeError):
    """The kernel cannot be traced at all (no modules, no kprobes)."""


@dataclass(frozen=True, slots=True)
class Features:
    release: str
    # kernel/module/dups.c, CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS: commit "module: add
    # debugging auto-load duplicate module support" (6.4).
    dups: bool
    # kmod_dup_request_complete: dups.c completing entries from a work item, where a
    # later announce can still overwrite dup_ret (the deferred form, see dups_form()).
    dups_deferred: bool
    # idempotent() is static and inlined; init_module_from_file() came in the same
    # series, commit 9b9879fc0327 "modules: catch concurrent module loads, treat
    # them as idempotent" (6.5 era).
    idempotent: bool
    # module_patient_check_exists() / early_mod_check(): commit "module: avoid
    # allocation if module is already present and ready" (6.4). Both may be inlined,
    # so a kernel with idempotent(), which is later, is taken to have them too.
    patient: bool
    # CONFIG_MODULE_STATS: commit "module: add debug stats to help identify memory
    # pressure" (6.4); try_add_failed_module() is its entry point.
    module_stats: bool
    # CONFIG_MODULE_SIG: module_sig_check() in kernel/module/signing.c (3.7), the first
    # call of load_module(); with MODULE_SIG=n it is an inline stub.
    module_sig: bool = False
    # The dups.c announce form the model uses (kernel-semantics.md section 2) and where it
    # came from (dups_form()): "detected" from dups.c itself, "release" where dups.c is
    # not built in, "assumed" where neither says, "override" (--announce).
    announce: Announce = "deferred"
    announce_source: AnnounceSource = "assumed"

    @property
    def profile(self) -> Profile:
        from tracer.model import PROFILE_6_1, PROFILE_6_4, PROFILE_6_5, Profile

        base = PROFILE_6_5 if self.idempotent else PROFILE_6_4 if self.patient else PROFILE_6_1
        return Profile(
            name=base.name + ("/dups" if self.dups else ""),
            dups=self.dups,
            idempotent=self.idempotent,
            patient=self.patient,
            announce=self.announce,
            announce_source=self.announce_source,
            module_stats=self.module_stats,
            sig_check=self.module_sig,
        )

    def with_announce(self, announce: Announce) -> Features:
        """The form forced by the user (--announce)."""
        return replace(self, announce=announce, announce_source="override")

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"profile": self.profile.name}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Features:
        """Read back what to_dict() wrote into a trace header; traces written before the
        announce keys get the form detect() would give them."""
        from tracer.model import Announce, AnnounceSource

        dups, deferred = bool(d.get("dups")), bool(d.get("dups_deferred"))
        announce, source = dups_form(dups, deferred, None, str(d.get("release", "")))
        if d.get("announce") in get_args(Announce):
            announce = d["announce"]  # type: ignore[assignment]
        if d.get("announce_source") in get_args(AnnounceSource):
            source = d["announce_source"]  # type: ignore[assignment]
        features = cls(
            release=str(d.get("release", "")),
            dups=dups,
            dups_deferred=deferred,
            idempotent=bool(d.get("idempotent")),
            patient=bool(d.get("patient")),
            module_stats=bool(d.get("module_stats")),
            module_sig=bool(d.get("module_sig")),
            announce=announce,
            announce_source=source,
        )
        return features


def announce_form(text: str) -> Announce:
    """A form the user named (--announce); ValueError if it is none."""
    from tracer.model import Announce

    for form in get_args(Announce):
        if text == form:
            return form  # type: ignore[no-any-return]
    raise ValueError(f"unknown announce form {text!r}: {' or '.join(get_args(Announce))}")


# kernel/module/dups.c comes in two forms the model tells apart (tracer/model/dups.py):
# * deferred (6.4, commit "module: add debugging auto-load duplicate module support"):
#   struct kmod_dup_req has complete_work; every kmod_dup_request_announce()
#   stores dup_ret and queues kmod_dup_request_complete(), so a later announce overwrites
#   what a duplicate arriving in the 60 s tail reads. Seen in Debian's linux-source-6.12
#   (6.12.95) and in public trees already converted to kzalloc_obj() (the 7.0 cycle).
# * first (the refcount rework): struct kmod_dup_req has refcount_t refcount and no
#   complete_work; announce returns at once once completion_done(&first_req_done), calls
#   complete_all() itself inside kmod_dup_mutex and queues delete_work 60 s after that
#   first announce. Seen in Debian's linux-source-7.2 (7.2.13) and -7.3 (7.3.4), whose
#   changelogs name no dups.c change of their own or of stable: it is in the upstream
#   base of 7.2. The upstream commit could not be found from here, so 7.0 and 7.1 are
#   unproven either way.
# An intermediate form (direct completion, dup_ret still overwritten) follows the deferred
# rules: the model does not time the work item, so the two differ in nothing it predicts.
FIRST_WINS_FROM = (7, 2)  # the first release proven to carry the refcount form
DEFERRED_BEFORE = (7, 0)  # releases before it are proven (or, by tree, known) deferred


def _release_tuple(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else None


def dups_form(dups: bool, deferred_symbol: bool,
              has_field: Callable[[str, str], bool | None] | None,
              release: str) -> tuple[Announce, AnnounceSource]:  # fmt: skip
    """The announce form of this kernel's dups.c and where that came from.

    With dups.c built in, its own struct kmod_dup_req (BTF) decides, or the symbol
    kmod_dup_request_complete (the deferred form's work function). Without dups.c (or
    without BTF to read it), the release: what a kernel of that release would do with the
    option on."""
    if dups:
        if deferred_symbol:
            return "deferred", "detected"
        if has_field is not None:
            if has_field("kmod_dup_req", "complete_work"):
                return "deferred", "detected"
            if has_field("kmod_dup_req", "refcount"):
                return "first", "detected"
            if has_field("kmod_dup_req", "dup_ret") is not None:
                return "deferred", "assumed"  # a layout of neither form: overwrite rules
    rel = _release_tuple(release)
    if rel is None:
        return "deferred", "assumed"
    if rel >= FIRST_WINS_FROM:
        return "first", "release"
    if rel < DEFERRED_BEFORE:
        return "deferred", "release"
    return "deferred", "assumed"


# Every symbol detect() asks about, so that a caller can look them all up in one pass.
DETECTED_SYMBOLS = (
    "init_module_from_file", "module_patient_check_exists", "early_mod_check",
    "kmod_dup_request_exists_wait", "kmod_dup_request_complete", "try_add_failed_module",
    "module_sig_check",
)


def detect(has_symbol: Callable[[str], bool],
           has_field: Callable[[str, str], bool | None] | None = None,
           release: str | None = None) -> Features:
    """The running kernel's facts (RELEASE for tests); HAS_FIELD (BTF) is asked only where
    dups.c is built in, to tell its form."""
    idempotent = has_symbol("init_module_from_file")
    patient = (
        idempotent
        or has_symbol("module_patient_check_exists")
        or has_symbol("early_mod_check")
    )
    dups = has_symbol("kmod_dup_request_exists_wait")
    deferred = has_symbol("kmod_dup_request_complete")
    release = release or platform.release()
    announce, source = dups_form(dups, deferred, has_field, release)
    features = Features(
        release=release,
        dups=dups,
        dups_deferred=deferred,
        idempotent=idempotent,
        patient=patient,
        module_stats=has_symbol("try_add_failed_module"),
        module_sig=has_symbol("module_sig_check"),
        announce=announce,
        announce_source=source,
    )
    return features


def load_info_len_offset(has_field: Callable[[str, str], bool | None]) -> int:
    """Where `len` sits in struct load_info (kernel/module/internal.h) when BTF cannot
    say. It is `name, mod, hdr, len` in every kernel this tool models (checked in 6.1's
    and 6.12's internal.h); trees whose load_info has no `name` field (before
    kernel/module/ was split out in 5.19 it lived in kernel/module.c and started
    `hdr, len`) are told apart by BTF."""
    return 8 if has_field("load_info", "name") is False else 24


# Every struct member the BPF program reads: (its -D macro, struct, member path). The
# offsets come from the running kernel's BTF; on a kernel without BTF, from the kernel
# headers as offsetof() (load_info is private to kernel/module/internal.h: there
# load_info_len_offset() says where len is).
OFFSETS: tuple[tuple[str, str, str], ...] = (
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_FILES", "task_struct", "files"),
    ("OFF_FILES_FDT", "files_struct", "fdt"),
    ("OFF_FDTABLE_FD", "fdtable", "fd"),
    ("OFF_FILE_INODE", "file", "f_inode"),
    ("OFF_FILE_DENTRY", "file", "f_path.dentry"),
    ("OFF_INODE_INO", "inode", "i_ino"),
    ("OFF_INODE_SIZE", "inode", "i_size"),
    ("OFF_INODE_SB", "inode", "i_sb"),
    ("OFF_SB_DEV", "super_block", "s_dev"),
    ("OFF_DENTRY_NAME", "dentry", "d_name.name"),
    ("OFF_UMH_PATH", "subprocess_info", "path"),
    ("OFF_UMH_ARGV", "subprocess_info", "argv"),
    ("OFF_LOAD_INFO_LEN", "load_info", "len"),
)

def offset_definitions() -> str:
    """C text: N_OFFSETS, and each OFFSETS macro not given as a -D flag read from its slot
    of the program's kmt_off map (filled from btf_offsets() once compiled)."""
    lines = [f"#define N_OFFSETS {len(OFFSETS)}"]
    for i, (macro, _struct, _path) in enumerate(OFFSETS):
        lines += [f"#ifndef {macro}", f"#define {macro} kmt_offset({i})", "#endif"]
    return "\n".join(lines) + "\n"


def btf_offsets(btf: BTF) -> dict[str, int]:
    """OFFSETS' macros with their byte offsets in the running kernel. A struct missing
    from BTF is a BTFError, except load_info (only with CONFIG_MODULES), which falls
    back to load_info_len_offset()."""
    out = {}
    for macro, struct_name, path in OFFSETS:
        if struct_name == "load_info" and btf.has_field(struct_name, path) is None:
            out[macro] = load_info_len_offset(btf.has_field)
        else:
            out[macro] = btf.offset(struct_name, path)
    return out


def header_offsets(has_field: Callable[[str, str], bool | None]) -> dict[str, str]:
    """OFFSETS' macros as offsetof() over the kernel headers, for a kernel without BTF."""
    out = {macro: f"__builtin_offsetof(struct {s},{p})" for macro, s, p in OFFSETS
           if s != "load_info"}
    out["OFF_LOAD_INFO_LEN"] = str(load_info_len_offset(has_field))
    return out


def tracefs() -> str | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(path, "available_events")):
            return path
    return None


def check_traceable() -> None:
    """Raise KernelUnsupported with one clear line if nothing can be traced."""
    if not os.path.exists("/proc/modules"):
        raise KernelUnsupported(
            f"kernel {platform.release()} has no module support (CONFIG_MODULES): "
            "there is nothing to trace"
        )
    if not os.path.exists("/sys/bus/event_source/devices/kprobe"):
        raise KernelUnsupported(
            f"kernel {platform.release()} has no kprobes (CONFIG_KPROBES): cannot trace"
        )


def kernel_headers_present(release: str | None = None) -> bool:
    release = release or platform.release()
    return os.path.isdir(f"/lib/modules/{release}/build/include") or os.path.exists(
        "/sys/kernel/kheaders.tar.xz"
    )


def early_file_hook(has_function: Callable[[str], bool]) -> tuple[str, int | None]:
    """Where a boot-time kprobe sees the struct file of a finit_module call: (symbol,
    index of its kernel_read_file_id argument, or None).

    idempotent_init_module(f, uargs, flags) sees every call, waiters included: commit
    9b9879fc0327 "modules: catch concurrent module loads, treat them as idempotent"
    (6.6). Before it (or where it is inlined) kernel_read_file(file, offset, buf,
    buf_size, file_size, id) reads the module; a call that fails before reading shows
    no file there."""
    if has_function("idempotent_init_module"):
        return "idempotent_init_module", None
    return "kernel_read_file", 5


def version_code(release: str) -> int:
    """LINUX_VERSION_CODE of a release ("6.1.0-56-amd64"), which bcc's helpers.h writes
    into the program's "version" section for the BTF build (no linux/version.h there).
    Kernels since 5.0 ignore it for kprobes; it detects nothing."""
    nums = [int(x) for x in release.split("-")[0].split("+")[0].split(".")[:3] if x.isdigit()]
    a, b, c = [*nums, 0, 0, 0][:3]
    return (a << 16) + (b << 8) + min(c, 255)


def kallsyms_lookup(names: Iterable[str], path: str = "/proc/kallsyms"
                    ) -> dict[str, tuple[str, int]]:
    """name -> (kallsyms type letter, address) for those of NAMES in the core kernel
    (data symbols too, which bcc's cache leaves out); the address is 0 where
    kptr_restrict hides it. One read and a search per name in C: bcc's ksymname() loads
    its whole symbol cache (seconds under emulation) to answer a dozen lookups."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    found: dict[str, tuple[str, int]] = {}
    for name in set(names):
        end = data.find(f" {name}\n".encode())  # "ADDR TYPE NAME\n"; modules' have a tab
        if end < 2:
            continue
        start = data.rfind(b"\n", 0, end) + 1
        found[name] = (chr(data[end - 1]), int(data[start:end - 2], 16))
    return found


def is_function(entry: tuple[str, int] | None) -> bool:
    """A kallsyms_lookup() entry that is code (what a kprobe or fexit can attach to)."""
    return entry is not None and entry[0] in "tTwW"


# The kmod throttle (kernel-semantics.md section 1, step 4): "semaphore",
# down_timeout() on kmod_concurrent_max (6.4 on), where an fexit sees a request time
# out; or "waitqueue", a wait on kmod_wq (commit 6d7964a722af "kmod: throttle kmod
# thread limit", 4.13, to 6.3), which has no such hook (tracer/bpf: req_site sees those
# returns). kmod_wq is what tells them apart.
ThrottleForm = Literal["semaphore", "waitqueue"]
THROTTLE_SYMBOLS = ("kmod_concurrent_max", "kmod_wq", "down_timeout",
                    "bpf_trampoline_link_prog")


def has_fexit(syms: dict[str, tuple[str, int]], btf_path: str = "/sys/kernel/btf/vmlinux"
              ) -> bool:
    """BPF trampolines (fexit): x86-64, the kernel's BTF, and bpf_trampoline_link_prog in
    kallsyms, the test bcc's support_kfunc() makes (commit fec56f5890d9 "bpf: Introduce
    BPF trampoline", 5.5), without the symbol cache it loads for it (seconds under
    emulation)."""
    return (platform.machine() == "x86_64" and os.path.exists(btf_path)
            and is_function(syms.get("bpf_trampoline_link_prog")))


# x86-64 system calls reach their code through a wrapper that takes the caller's
# registers, __x64_sys_NAME(const struct pt_regs *) (commit fa697140f9a2 "syscalls/x86:
# Use 'struct pt_regs' based syscall calling convention for 64-bit syscalls", 4.17).
# Where the kernel has BPF trampolines (has_fexit) and kallsyms has the wrapper, an
# fentry/fexit on it sees that one call, in place of a syscalls:* tracepoint that slows
# every system call of every task (tracer/bpf: SYS_FENTRY_*).
TRAMPOLINED_SYSCALLS = ("finit_module", "init_module", "sendmsg")


def syscall_wrapper(name: str) -> str:
    return f"__x64_sys_{name}"


def throttle_form(syms: dict[str, tuple[str, int]]) -> tuple[ThrottleForm, int] | None:
    """(form, address of kmod_concurrent_max) from a kallsyms_lookup() of
    THROTTLE_SYMBOLS; None where kallsyms hides data symbols (no CONFIG_KALLSYMS_ALL,
    or kptr_restrict) or the semaphore's down_timeout() is missing."""
    addr = syms.get("kmod_concurrent_max", ("", 0))[1]
    if not addr:
        return None
    if "kmod_wq" in syms:
        return "waitqueue", addr
    return ("semaphore", addr) if is_function(syms.get("down_timeout")) else None


# A BPF trampoline runs its program with migration disabled but preemption enabled
# (kernel/bpf/trampoline.c __bpf_prog_enter_recur(): migrate_disable()), and skips a
# program already active on the CPU, counting the skip only in its recursion_misses
# (commit ca06f55b9002 "bpf: Add per-program recursion prevention mechanism", 5.12).
# Where the kernel preempts kernel code, a task preempted inside the fexit of
# finit_module makes the fexit of every other task on that CPU skip until it resumes:
# Debian's 7.3.4 (PREEMPT_DYNAMIC, lazy) lost 5 of 320 entries and 18 returns of
# 16-wide insmod storms. kprobes run their programs with preemption disabled, so there
# the module syscalls are hooked by kprobe/kretprobe (tracer/probes.py).
PREEMPT_SYMBOLS = ("preempt_schedule", "preempt_dynamic_mode")
# enum preempt_dynamic_mode (kernel/sched/core.c): none 0, voluntary 1, full 2, lazy 3
# (lazy: commit 7c70cb94d29c "sched: Add Lazy preemption model", 6.13)
PREEMPT_MODES = ("none", "voluntary", "full", "lazy")


def preemption(syms: dict[str, tuple[str, int]],
               read: Callable[[int, int], bytes | None]) -> tuple[bool, str]:
    """Whether this kernel preempts kernel code now, and the model's name: no
    preempt_schedule means CONFIG_PREEMPTION=n ("none/voluntary build"); with
    PREEMPT_DYNAMIC (Debian's 6.1 and 6.12 run it as voluntary, 7.3 as lazy) the mode
    chosen at boot is preempt_dynamic_mode's value, READ(addr, 4) from kernel memory;
    where it cannot be read, preemptible ("unknown"), the safe guess."""
    if not is_function(syms.get("preempt_schedule")):
        return False, "none/voluntary build"
    entry = syms.get("preempt_dynamic_mode")
    if entry is None:
        return True, "preemptible build"
    raw = read(entry[1], 4) if entry[1] else None
    if raw is None or len(raw) != 4:
        return True, "unknown"
    mode = int.from_bytes(raw, "little", signed=True)
    name = PREEMPT_MODES[mode] if 0 <= mode < len(PREEMPT_MODES) else f"mode {mode}"
    return mode not in (0, 1), name


# The module syscalls hooked by kprobe/kretprobe on their wrapper where trampolines can
# be preempted (sendmsg keeps its fentry: a skip there loses a device name, not a load,
# and is counted in its recursion_misses).
KPROBED_SYSCALLS = ("finit_module", "init_module")
