"""Everything that differs between kernels, detected from the running kernel.

Detection uses symbols and tracepoints, never the version number; each check
names the kernel commit that introduced what it looks for. This module has no
bcc import so that the facts can be computed and tested anywhere; probes.py
feeds it bcc's lookups.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tracer.model import PROFILE_6_1, PROFILE_6_4, PROFILE_6_5, Profile

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class KernelUnsupported(RuntimeError):
    """The kernel cannot be traced at all (no modules, no kprobes)."""


@dataclass(frozen=True, slots=True)
class Features:
    release: str
    # kernel/module/dups.c, CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS: commit "module: add
    # debugging auto-load duplicate module support" (6.4).
    dups: bool
    # dups.c completing entries from a work item, where a later announce can still
    # overwrite dup_ret (kmod_dup_request_complete, the 6.4-era form; Debian's 6.12
    # has it); newer trees complete on the first announce.
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

    @property
    def profile(self) -> Profile:
        base = PROFILE_6_5 if self.idempotent else PROFILE_6_4 if self.patient else PROFILE_6_1
        name = base.name + ("/dups" if self.dups else "")
        announce = base.announce
        if self.dups:
            announce = "deferred" if self.dups_deferred else "first"
        return Profile(
            name=name,
            dups=self.dups,
            idempotent=self.idempotent,
            patient=self.patient,
            announce=announce,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"profile": self.profile.name}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Features:
        """Read back what to_dict() wrote into a trace header."""
        return cls(
            release=str(d.get("release", "")),
            dups=bool(d.get("dups")),
            dups_deferred=bool(d.get("dups_deferred")),
            idempotent=bool(d.get("idempotent")),
            patient=bool(d.get("patient")),
            module_stats=bool(d.get("module_stats")),
        )


def detect(has_symbol: Callable[[str], bool]) -> Features:
    idempotent = has_symbol("init_module_from_file")
    patient = (
        idempotent
        or has_symbol("module_patient_check_exists")
        or has_symbol("early_mod_check")
    )
    return Features(
        release=platform.release(),
        dups=has_symbol("kmod_dup_request_exists_wait"),
        dups_deferred=has_symbol("kmod_dup_request_complete"),
        idempotent=idempotent,
        patient=patient,
        module_stats=has_symbol("try_add_failed_module"),
    )


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
