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
from dataclasses import asdict, dataclass, replace
from typing import get_args

from tracer.model import PROFILE_6_1, PROFILE_6_4, PROFILE_6_5, Announce, AnnounceSource, Profile

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
    # later announce can still overwrite dup_ret (every release 6.4 to 7.1).
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
    # came from: "detected" only with dups.c and kmod_dup_request_complete built in. Its
    # absence does not prove "first" (an intermediate form completes directly), so every
    # other kernel is "assumed" deferred; "first" only as an "override".
    announce: Announce = "deferred"
    announce_source: AnnounceSource = "assumed"

    @property
    def profile(self) -> Profile:
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
        dups, deferred = bool(d.get("dups")), bool(d.get("dups_deferred"))
        announce, source = _announce_form(dups, deferred)
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
    for form in get_args(Announce):
        if text == form:
            return form  # type: ignore[no-any-return]
    raise ValueError(f"unknown announce form {text!r}: {' or '.join(get_args(Announce))}")


def _announce_form(dups: bool, deferred: bool) -> tuple[Announce, AnnounceSource]:
    if dups and deferred:
        return "deferred", "detected"
    return "deferred", "assumed"


def detect(has_symbol: Callable[[str], bool]) -> Features:
    idempotent = has_symbol("init_module_from_file")
    patient = (
        idempotent
        or has_symbol("module_patient_check_exists")
        or has_symbol("early_mod_check")
    )
    dups = has_symbol("kmod_dup_request_exists_wait")
    deferred = has_symbol("kmod_dup_request_complete")
    announce, source = _announce_form(dups, deferred)
    features = Features(
        release=platform.release(),
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
    """Where `len` sits in struct load_info (kernel/module/internal.h), read by the
    module_sig_check probe. It is `name, mod, hdr, len` in every kernel this tool
    models (checked in 6.1's and 6.12's internal.h); trees whose load_info has no
    `name` field (before kernel/module/ was split out in 5.19 it lived in
    kernel/module.c and started `hdr, len`) are told apart by BTF."""
    return 8 if has_field("load_info", "name") is False else 24


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
