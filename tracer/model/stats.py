"""MODULE_STATS (kernel/module/stats.c): the bytes each failed load attempt wastes.

Which counter a failure bumps depends on the phase of load_module() it failed in, and the
syscall's return value is all the trace shows of that. Where an errno arises in several
phases the table below takes the most common one and marks the figure approximate.
``len`` is info->len: after the signature is stripped and after decompression. It is
Load.mod_len where known; otherwise the size the syscall saw stands for it (the file or
buffer length: a little more than len for a signed module, less for a compressed one).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Final, Literal

from tracer.stories import Load

# include/uapi/linux/module.h: finit_module() flag, the kernel decompresses the file.
MODULE_INIT_COMPRESSED_FILE: Final = 4
# finit_module() refuses any other flag bit with -EINVAL before reading (main.c):
# MODULE_INIT_IGNORE_MODVERSIONS | MODULE_INIT_IGNORE_VERMAGIC | MODULE_INIT_COMPRESSED_FILE.
_FINIT_FLAGS: Final = 1 | 2 | MODULE_INIT_COMPRESSED_FILE
# sizeof(Elf64_Ehdr): copy_module_from_user() refuses a shorter buffer with -ENOEXEC.
_EHDR_SIZE: Final = 64

# The four invalid_*_bytes counters of stats.c, by the phase the attempt failed in:
# "kread" the read or copy of the module, "decompress" module_decompress(), "becoming"
# after the read and before layout_and_allocate(), "invalid" after it.
ByteClass = Literal["kread", "decompress", "becoming", "invalid"]

# errno -> (phase, approximate), for finit_module() failures that are not duplicates.
# None: fails before anything is read (may_init_module(), flag and fd checks).
_FINIT_PHASE: Final[dict[int, tuple[ByteClass | None, bool]]] = {
    # blacklisted() in early_mod_check(), after the read; may_init_module() (no
    # CAP_SYS_MODULE) and an LSM refusing the read return it too, counting nothing.
    errno.EPERM: ("becoming", True),
    # parse_args() in load_module(), after layout_and_allocate(); the flag check in
    # finit_module() returns it before the read.
    errno.EINVAL: ("invalid", True),
    # apply_relocations() and verify_exported_symbols() (a duplicate symbol), after the
    # allocation; elf_validity_cache_copy() and check_modinfo() (vermagic) return it
    # before. Modules of the running kernel rarely fail those.
    errno.ENOEXEC: ("invalid", True),
    # simplify_symbols(): "Unknown symbol", after the allocation.
    errno.ENOENT: ("invalid", False),
    # strndup_user() of the arguments, after the allocation.
    errno.EFAULT: ("invalid", True),
    # kernel_read_file(): a writer holds the file, or it is over INT_MAX. Counted in
    # failed_kreads, no bytes since 6.5 (6.4 added the negative errno, a bug).
    errno.ETXTBSY: ("kread", False),
    errno.EFBIG: ("kread", False),
    # kernel_read_file(): an LSM refusing the read (SELinux), or the read itself failing.
    errno.EACCES: ("kread", True),
    errno.EIO: ("kread", True),
    # the read's vmalloc() is the largest allocation; layout_and_allocate() (becoming)
    # and percpu_modalloc() (invalid) return it too.
    errno.ENOMEM: ("kread", True),
    errno.EBADF: (None, False),  # finit_module() fd checks: nothing read
    # module_sig_check(): before layout_and_allocate().
    errno.EKEYREJECTED: ("becoming", False),
    errno.ENOKEY: ("becoming", False),
    errno.EBADMSG: ("becoming", False),
    errno.ENODATA: ("becoming", False),
    errno.ENOPKG: ("becoming", False),
}
# module_decompress() fails with these; without CONFIG_MODULE_DECOMPRESS its stub returns
# -EOPNOTSUPP. EINVAL and ENOMEM also arise later (parse_args(), allocations).
_DECOMPRESS_PHASE: Final[dict[int, bool]] = {
    errno.EOPNOTSUPP: False, errno.EINVAL: True, errno.ENOMEM: True,
}
# init_module(): copy_module_from_user() failing adds len to invalid_kread_bytes; -EFAULT
# (a bad user buffer) is the usual one, -ENOMEM (its vmalloc()) the other.
_INIT_KREAD: Final[dict[int, bool]] = {errno.EFAULT: True, errno.ENOMEM: True}


# Where module_sig_check() was traced (Profile.sig_check) the trace shows whether the
# attempt reached load_module(). Reached: the errno arose in load_module(), before
# layout_and_allocate() (becoming) or after it (invalid).
_LOAD_MODULE_PHASE: Final[dict[int, tuple[ByteClass, bool]]] = {
    errno.EPERM: ("becoming", False),  # blacklisted() in early_mod_check()
    errno.EINVAL: ("invalid", False),  # parse_args(), after the allocation
    errno.EFAULT: ("invalid", False),  # strndup_user() of the arguments
    errno.ENOENT: ("invalid", False),  # simplify_symbols()
    # elf_validity_cache_copy()/check_modinfo() before, apply_relocations() after
    errno.ENOEXEC: ("invalid", True),
    # layout_and_allocate() before, percpu_modalloc() after
    errno.ENOMEM: ("becoming", True),
}
# Not reached: finit_module() failed in kernel_read_file() (failed_kreads, no bytes),
# in module_decompress() (flag 4), or before the read (nothing); init_module() in
# copy_module_from_user() (len to invalid_kread_bytes) or before it (nothing).
# module_decompress() errors (decompress.c; -EOPNOTSUPP: the stub of internal.h).
_DECOMPRESS: Final = frozenset({errno.EINVAL, errno.ENOMEM, errno.EOPNOTSUPP})
# Errnos that only load_module() returns: kernel_read_file(), module_decompress() and the
# checks before them never do (an LSM could, but none does). Seen with no MOD_LEN, the
# module_sig_check() kretprobe missed: the attempt did reach load_module().
_LOAD_MODULE_ONLY: Final = frozenset({
    errno.ENOENT, errno.EEXIST, errno.EBUSY,  # simplify_symbols(), the patient checks
    # module_sig_check(), mod_verify_sig()
    errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG, errno.ENODATA, errno.ENOPKG,
})


def reached_load_module(load: Load) -> bool:
    """Where module_sig_check() is traced: whether a failed attempt got to load_module().

    Its kretprobe's MOD_LEN says so; without it, what only load_module() does says so too
    (a patient check, module:module_load, an errno only it returns): then the return
    was missed, not the call. Otherwise the attempt failed before load_module()."""
    if load.mod_len is not None or load.patient_check is not None or load.loaded:
        return True
    err = -(load.ret or 0)
    if err in _LOAD_MODULE_ONLY:
        return True
    if err == errno.ENOEXEC:  # finit: ELF checks only; init: also a buffer under a header
        return load.syscall == "finit_module" or load.size >= _EHDR_SIZE
    return err == errno.EFAULT and load.syscall == "finit_module"  # strndup_user(uargs)


def failure_phase(load: Load, err: int, reached: bool | None = None
                  ) -> tuple[ByteClass | None, bool]:  # fmt: skip
    """The stats.c class of a failed attempt that is not a duplicate, and whether the
    errno left the phase ambiguous. REACHED: whether it got to load_module(), where the
    trace shows it (None: not known). Anything not listed: a check before the allocation."""
    if reached is not None:
        return _phase_by_reach(load, err, reached)
    if load.syscall == "init_module" and err in _INIT_KREAD:
        return "kread", _INIT_KREAD[err]
    if load.flags & MODULE_INIT_COMPRESSED_FILE and err in _DECOMPRESS_PHASE:
        return "decompress", _DECOMPRESS_PHASE[err]
    return _FINIT_PHASE.get(err, ("becoming", True))


def _phase_by_reach(load: Load, err: int, reached: bool) -> tuple[ByteClass | None, bool]:
    if reached:
        return _LOAD_MODULE_PHASE.get(err, ("becoming", True))
    # main.c (6.12): every error of init_module()'s copy_module_from_user() (-ENOEXEC for
    # a short buffer, security_kernel_load_data(), vmalloc, copy) and of finit_module()'s
    # kernel_read_file() (deny_write_access(), size checks, security_kernel_read_file() and
    # _post_read_file(): LSM denials such as LoadPin's or a BPF LSM's, vmalloc, the read)
    # bumps failed_kreads. Only may_init_module()'s -EPERM, finit_module()'s flag check
    # and idempotent_init_module()'s fd check come before, counting nothing; an LSM's
    # -EPERM looks like may_init_module()'s, so EPERM is taken as the LSM's, approximate.
    if load.syscall == "init_module":
        return "kread", err == errno.EPERM
    if err == errno.EBADF or (err == errno.EINVAL and load.flags & ~_FINIT_FLAGS):
        return None, False
    if load.flags & MODULE_INIT_COMPRESSED_FILE and err in _DECOMPRESS:
        return "decompress", err == errno.ENOMEM  # or the read's vmalloc()
    return "kread", err == errno.EPERM


def wasted(load: Load, byte_class: ByteClass) -> int:
    """Bytes stats.c adds for one failure of BYTE_CLASS."""
    compressed = load.syscall == "finit_module" and bool(load.flags & MODULE_INIT_COMPRESSED_FILE)
    size = load.size  # what was read: the compressed length for a compressed file
    length = load.mod_len if load.mod_len is not None else size  # info->len
    extra = size if compressed else 0  # info->compressed_len
    if byte_class == "kread":
        # init_module(): the whole user length; finit_module(): nothing since 6.5.
        return size if load.syscall == "init_module" else 0
    if byte_class == "decompress":
        return size  # init_module_from_file(): mod_stat_add_long(len, ...) of the read
    if byte_class == "becoming":
        return length + extra  # mod_stat_bump_becoming()
    return 2 * length + extra  # mod_stat_bump_invalid(): the copy and the final layout


@dataclass(frozen=True, slots=True)
class DupFailed:
    """A line of the "Duplicate failed modules" table (kernel/module/stats.c)."""

    name: str
    count: int
    reason: str  # mod_fail_to_str(): "Becoming", "Load" or "Becoming & Load"


@dataclass(frozen=True, slots=True)
class StatsSummary:
    """/sys/kernel/debug/modules/stats as the actual kernel would count it."""

    invalid_kread_bytes: int  # "Failed kread bytes"
    invalid_decompress_bytes: int  # "Failed decompress bytes"
    invalid_becoming_bytes: int  # "Failed becoming bytes"
    invalid_mod_bytes: int  # "Failed kmod bytes"
    failed_kreads: int  # "Mods failed on kread"
    failed_decompress: int  # "Mods failed on decompress"
    failed_becoming: int  # "Mods failed on becoming"
    failed_load: int  # "Mods failed on load"
    dup_failed: dict[str, DupFailed]
    bytes_saved_idempotent: int  # what idempotent() would have saved
    # True where the kernel has no CONFIG_MODULE_STATS: what a kernel with it would count.
    modelled: bool = True
    approximate: int = 0  # failures whose phase the errno left ambiguous
    # failures charged info->len that the trace did not show: the size stood for it
    len_unknown: int = 0

    @property
    def wasted_bytes(self) -> int:
        """ "Virtual mem wasted bytes": read_file_mod_stats() sums the four counters."""
        return (self.invalid_kread_bytes + self.invalid_decompress_bytes
                + self.invalid_becoming_bytes + self.invalid_mod_bytes)


class ModStats:
    """stats.c's counters, bumped as the actual kernel would."""

    def __init__(self, modelled: bool) -> None:
        self.modelled = modelled
        self.bytes: dict[ByteClass, int] = dict.fromkeys(_CLASSES, 0)
        self.failures: dict[ByteClass, int] = dict.fromkeys(_CLASSES, 0)
        self.saved_bytes = 0
        self.approximate = 0
        self.len_unknown = 0  # charges of info->len where no MOD_LEN showed it
        self._dup_failed: dict[str, tuple[int, set[str]]] = {}

    def bump(self, byte_class: ByteClass, n: int, approximate: bool) -> None:
        self.bytes[byte_class] += n
        self.failures[byte_class] += 1
        self.approximate += approximate

    def add_dup_failed(self, name: str, reason: str) -> None:
        """try_add_failed_module(): a count and a reason mask per name."""
        count, reasons = self._dup_failed.get(name, (0, set()))
        reasons.add(reason)
        self._dup_failed[name] = (count + 1, reasons)

    def summary(self) -> StatsSummary:
        table = {
            # mod_fail_to_str()
            name: DupFailed(name, n, " & ".join(r for r in ("Becoming", "Load") if r in rs))
            for name, (n, rs) in self._dup_failed.items()
        }
        b, f = self.bytes, self.failures
        return StatsSummary(
            invalid_kread_bytes=b["kread"], invalid_decompress_bytes=b["decompress"],
            invalid_becoming_bytes=b["becoming"], invalid_mod_bytes=b["invalid"],
            failed_kreads=f["kread"], failed_decompress=f["decompress"],
            failed_becoming=f["becoming"], failed_load=f["invalid"], dup_failed=table,
            bytes_saved_idempotent=self.saved_bytes, modelled=self.modelled,
            approximate=self.approximate, len_unknown=self.len_unknown,
        )  # fmt: skip


_CLASSES: Final[tuple[ByteClass, ...]] = ("kread", "decompress", "becoming", "invalid")
