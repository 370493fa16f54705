"""A pure-Python model of what the kernel does with concurrent module requests and loads.

Fed one moment at a time (live, or from a recorded trace) in timestamp order:

    request_arrive(req)   at module:module_request        (req.tp_ns, name, wait)
    request_done(req)     at the __request_module return   (req.end_ns, ret, umh_*)
    load_start(load)      at sys_enter_{finit,init}_module (start_ns, file, dev, ino, size)
    load_done(load)       at sys_exit_{finit,init}_module  (end_ns, ret, loaded, kernel_name)

One module per kernel mechanism it copies (see ../shared/docs/kernel-semantics.md):

* dups.py: kernel/module/dups.c, entries, announce forms, the 60 s tail, ties.
* loads.py: idempotent() and module_patient_check_exists() in kernel/module/main.c.
* stats.py: MODULE_STATS byte accounting (kernel/module/stats.c) by failure phase.
* throttle.py: the 50 kmod throttle slots, a wait duplicate holding its slot as it sleeps.
* counters.py: the per-name counters, defined once for the model, table and JSON.
* profile.py: what a kernel tree does (version table, announce form).
* core.py: the Model that feeds each moment to these.

Keying: requests by the exact request string (``fs-xfs``, ``net-pf-10``; aliases are not
resolved, as in dups.c); loads by their kmod name (``Load.module``). A request string that
equals a module name shares its ModuleStats.

Cost: O(1) amortised per event. State is the live dups entries, in-flight requests and
loads, in-flight inode winners, and one counter record per distinct name. Request and load
ids must be unique among those in flight. In-flight records whose end never came are
dropped after stale_ns (STALE_NS, not the kernel's).
"""

from tracer.model.core import Model
from tracer.model.counters import ModuleStats, json_fields, summary_fields
from tracer.model.dups import DUP_TAIL_NS, TIE_NS, RequestVerdict, Verdict, kernel_disagrees
from tracer.model.loads import LoadVerdict, Rule
from tracer.model.profile import (
    ANNOUNCE_SOURCE_TEXT,
    NS_PER_S,
    PROFILE_6_1,
    PROFILE_6_4,
    PROFILE_6_5,
    Announce,
    AnnounceSource,
    Profile,
    profile_json,
    profile_note,
    profile_with_dups,
    with_announce,
)
from tracer.model.stats import MODULE_INIT_COMPRESSED_FILE, ByteClass, DupFailed, StatsSummary
from tracer.model.throttle import ALL_BUSY_TIMEOUT_NS, MAX_KMOD_CONCURRENT
from tracer.stories import STALE_NS

__all__ = [
    "ALL_BUSY_TIMEOUT_NS",
    "ANNOUNCE_SOURCE_TEXT",
    "DUP_TAIL_NS",
    "MAX_KMOD_CONCURRENT",
    "MODULE_INIT_COMPRESSED_FILE",
    "NS_PER_S",
    "PROFILE_6_1",
    "PROFILE_6_4",
    "PROFILE_6_5",
    "STALE_NS",
    "TIE_NS",
    "Announce",
    "AnnounceSource",
    "ByteClass",
    "DupFailed",
    "LoadVerdict",
    "Model",
    "ModuleStats",
    "Profile",
    "RequestVerdict",
    "Rule",
    "StatsSummary",
    "Verdict",
    "json_fields",
    "kernel_disagrees",
    "profile_json",
    "profile_note",
    "profile_with_dups",
    "summary_fields",
    "with_announce",
]
