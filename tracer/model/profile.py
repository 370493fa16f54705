"""What a kernel tree does, as the model needs it (kernel-semantics.md, section 7)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

# dups.c completion form (kernel-semantics.md section 2; tracer/kernel.py dups_form() has
# the releases). "deferred": every announce stores dup_ret and queues
# kmod_dup_request_complete(), so a later announce can overwrite what waiters read (6.4 on).
# "first": the refcount rework ignores announces once completion_done() (7.2 on).
Announce = Literal["first", "deferred"]
# Where the form came from: "detected" (dups.c's own struct or symbols), "release" (no
# dups.c to look at: the form of that release), "assumed" (neither says: deferred),
# "override" (--announce).
AnnounceSource = Literal["detected", "release", "assumed", "override"]
# How each source reads in the text views.
ANNOUNCE_SOURCE_TEXT: Final = {"detected": "detected", "release": "by release",
                               "assumed": "assumed", "override": "override"}

NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Profile:
    name: str  # e.g. "6.1", "6.4", "6.5+"
    dups: bool  # CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS built in (kernel/module/dups.c, 6.4+)
    idempotent: bool  # idempotent() finit_module convergence by inode (6.5+)
    patient: bool  # module_patient_check_exists() early "Becoming" check (6.4+)
    announce: Announce = "deferred"
    announce_source: AnnounceSource = "assumed"
    # CONFIG_MODULE_STATS built in: without it the model's MODULE_STATS figures are what a
    # kernel with the option would count, not anything this kernel counted.
    module_stats: bool = False
    # module_sig_check() traced (CONFIG_MODULE_SIG, every distribution): a load with no
    # MOD_LEN event never reached load_module(), which tells the failure phases apart.
    sig_check: bool = False


PROFILE_6_1: Final = Profile("6.1", dups=False, idempotent=False, patient=False)
PROFILE_6_4: Final = Profile("6.4", dups=False, idempotent=False, patient=True)
PROFILE_6_5: Final = Profile("6.5+", dups=False, idempotent=True, patient=True)


def profile_with_dups(p: Profile) -> Profile:
    """The same tree built with CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS."""
    return replace(p, dups=True)


def with_announce(p: Profile, announce: Announce) -> Profile:
    """P with the announce form forced (``--announce``): nothing about it is assumed."""
    return replace(p, announce=announce, announce_source="override")


def profile_json(p: Profile) -> dict[str, object]:
    """What `report --json` says about where its figures come from."""
    return {
        "stats_source": "kernel" if p.module_stats else "modelled",
        "announce": {"form": p.announce, "source": p.announce_source},
    }


def profile_note(p: Profile) -> str:
    """The same, one line for the text report."""
    stats = ("MODULE_STATS figures as this kernel counts them" if p.module_stats else
             "MODULE_STATS figures modelled: what a kernel with CONFIG_MODULE_STATS would count")
    return f"dups.c announce form {p.announce} ({ANNOUNCE_SOURCE_TEXT[p.announce_source]}); {stats}"
