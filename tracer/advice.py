"""Why each repeated module was tried again and again, and what would stop it.

Built from the Report only (its stories, verdicts and rows) and, to name the pattern a
udev MODALIAS matched, from the traced kernel's own `modules.alias` (and `modules.dep`,
to tell a module that came in as another's dependency), read offline from
/lib/modules/RELEASE. Nothing here is a guess: every piece of advice carries the facts it
rests on, and a module where none applies says so.

The patterns (issue #28):
- `same-errno`: every attempt failed with one errno;
- `init-fails-racers-ebusy`: the module's init failed while the attempts racing with it
  got EBUSY (they found it GOING);
- `per-device-alias`: one alias per device, the devices' loads racing with each other
  (all but one EEXIST);
- `converged`: idempotent() (6.5+) made attempts wait instead of reading, or the
  kernel's dups.c answered requests without modprobe;
- `kernel-caller-repeats`: one kernel call site asked for it more than once.

The advice:
- `blacklist`: a module that never bound on this machine, loaded by alias lookups:
  libkmod's blacklist (`modprobe.blacklist=` or a modprobe.d `blacklist` line) stops the
  lookup's load before the file is read. The kernel's `module_blacklist=` refuses only
  after the read (blacklisted() in load_module()), so it saves nothing;
- `preload`: a per-device-alias module that read its file again on every device: load it
  once, early (modules-load.d, ordered before udev's coldplug), so that libkmod finds it
  live and loads nothing (what idempotent() does for concurrent finit_module calls);
- `kernel-caller`: the function that asked, and the kernel remedy;
- `none`: no advice applies, and why.
"""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.bymodule import ByModule, ModuleRow
from tracer.model import LoadVerdict, RequestVerdict
from tracer.reportdata import Report
from tracer.stories import Load, Request, decode_wait_status, kmod_name, module_from_path
from tracer.udev import is_worker

MODULE_DIRS = ("/lib/modules", "/usr/lib/modules")

PATTERNS = {
    "same-errno": "fails on every attempt with the same errno",
    "init-fails-racers-ebusy": "init fails while racers get EBUSY (they found it GOING)",
    "per-device-alias": "per-device alias racing with itself (EEXIST)",
    "converged": "converged by the kernel (idempotent() or dups.c)",
    "kernel-caller-repeats": "a kernel caller asking repeatedly",
}

_NOT_FAILURES = frozenset({"loaded", "unknown"})
_LIVE = frozenset({"EEXIST"})  # an attempt that found the module there: it binds
# A racer's outcome while another load of the module succeeded: it found it LIVE, or its
# wait for the COMING one (add_unformed_module(), interruptible) was cut by a signal
_RACERS = frozenset({"EEXIST", "EINTR", "ERESTARTSYS", str(-512)})
_RESTART = {str(-512): "ERESTARTSYS"}  # the kernel's own errno, not in errno.errorcode


# --- modules.alias and modules.dep of the traced kernel ---------------------------------


def _alias_normalize(alias: str) -> str | None:
    """kmod's alias_normalize(): '-' becomes '_' outside brackets; None if unbalanced."""
    out, depth = [], False
    for c in alias:
        if c == "[":
            depth = True
        elif c == "]":
            if not depth:
                return None
            depth = False
        out.append("_" if c == "-" and not depth else c)
    return None if depth else "".join(out)


def fnmatch_regex(pattern: str) -> re.Pattern[str]:
    """A modules.alias pattern as glibc's fnmatch(pattern, s, 0) reads it, which kmod's
    index lookup uses: `*`, `?`, `[...]` with `!` or `^` negating, `\\` quoting the next
    character; no special case for `/` or a leading dot."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal [
                out.append(re.escape(c))
                continue
            body = pattern[i:j]
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[{'^' if neg else ''}{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _literal_prefix(pattern: str) -> str:
    m = re.match(r"[^*?\[\\]*", pattern)
    return m.group(0) if m else ""


@dataclass(slots=True)
class ModulesInfo:
    """What the traced kernel's modules.alias and modules.dep say, read once."""

    alias_path: str
    found: bool
    patterns: list[tuple[str, str, str]] = field(default_factory=list)  # prefix, pat, module
    deps: dict[str, frozenset[str]] = field(default_factory=dict)  # module -> its deps
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict)
    _matches: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def matches(self, modalias: str) -> list[tuple[str, str]]:
        """(pattern, module) of every modules.alias line MODALIAS matches, in file order."""
        hit = self._matches.get(modalias)
        if hit is not None:
            return hit
        name = _alias_normalize(modalias)
        out: list[tuple[str, str]] = []
        if name is not None:
            for prefix, pat, mod in self.patterns:
                if not name.startswith(prefix):
                    continue
                rx = self._compiled.get(pat)
                if rx is None:
                    rx = self._compiled[pat] = fnmatch_regex(pat)
                if rx.fullmatch(name):
                    out.append((pat, mod))
        self._matches[modalias] = out
        return out

    def needs(self, module: str, dep: str) -> bool:
        """MODULE depends on DEP (modules.dep lists the whole chain)."""
        return dep in self.deps.get(module, frozenset())


def read_modules_info(release: str | None, modules_dir: str | None = None) -> ModulesInfo:
    """The modules.alias (and modules.dep) of RELEASE, from MODULES_DIR if given (a
    /lib/modules/RELEASE copy from the traced machine), else /lib/modules/RELEASE or
    /usr/lib/modules/RELEASE. found is False where the file is not there."""
    dirs = [modules_dir] if modules_dir else [os.path.join(d, release or "?")
                                             for d in MODULE_DIRS]
    for d in dirs:
        path = os.path.join(d, "modules.alias")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            continue
        info = ModulesInfo(path, True)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                pat = _alias_normalize(parts[1])
                if pat is not None:
                    info.patterns.append((_literal_prefix(pat), pat, kmod_name(parts[2])))
        try:
            with open(os.path.join(d, "modules.dep"), encoding="utf-8",
                      errors="surrogateescape") as f:
                for line in f:
                    head, sep, tail = line.partition(":")
                    if sep:
                        info.deps[module_from_path(head)] = frozenset(
                            module_from_path(p) for p in tail.split())
        except OSError:
            pass
        return info
    return ModulesInfo(os.path.join(dirs[0], "modules.alias"), False)


# --- the advice ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Savings:
    """What following one piece of advice would have saved in the traced boot."""

    attempts: int = 0  # (f)init_module calls that would not have happened
    read_bytes: int = 0  # file bytes those calls read into vmalloc
    wasted_bytes: int = 0  # the MODULE_STATS bytes they wasted
    load_ns: int = 0  # time in those calls
    modprobe_spawns: int = 0  # modprobe helpers not run

    def to_json(self) -> dict[str, int]:
        return {"attempts": self.attempts, "read_bytes": self.read_bytes,
                "wasted_bytes": self.wasted_bytes, "load_ns": self.load_ns,
                "modprobe_spawns": self.modprobe_spawns}


@dataclass(frozen=True, slots=True)
class Advice:
    """One piece of advice for one module, with the facts it rests on."""

    module: str
    patterns: tuple[str, ...]  # keys of PATTERNS
    cause: tuple[str, ...]  # the cause chain: aliases and patterns, callers, statuses
    kind: str  # blacklist | preload | kernel-caller | none
    text: str
    facts: tuple[str, ...]
    savings: Savings | None  # None for `none`
    # the modules to blacklist or preload (`kmodtrace vm --boot --advice-from` applies
    # them); empty for kernel-caller and none
    targets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "pattern": list(self.patterns),
                "cause": list(self.cause), "kind": self.kind, "advice": self.text,
                "targets": list(self.targets), "facts": list(self.facts),
                "savings": None if self.savings is None else self.savings.to_json()}


@dataclass(frozen=True, slots=True)
class AdviceSet:
    """Every repeated module's advice, and where modules.alias came from."""

    items: tuple[Advice, ...]
    modules_alias: str  # the path read, or looked for
    alias_found: bool

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.items]

    def targets(self, kind: str) -> list[str]:
        """Every module the advice of KIND (blacklist, preload) names, sorted, once."""
        return sorted({t for a in self.items if a.kind == kind for t in a.targets})


def _ms(ns: int) -> str:
    return f"{ns / 1e9:.2f} s" if ns >= 1_000_000_000 else f"{ns / 1e6:.1f} ms"


def _bytes(n: int) -> str:
    from tracer.report import human_bytes

    return human_bytes(n)


def _counts(c: Mapping[str, int], top: int = 4) -> str:
    """"EBUSY:29,ENODEV:3", most first; past TOP entries, how many more."""
    items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ",".join(f"{k}:{n}" for k, n in items[:top])
    rest = items[top:]
    return text + (f" and {len(rest)} more ({sum(n for _, n in rest)})" if rest else "")


def _errno(ret: int) -> str:
    return errno.errorcode.get(-ret, str(ret)) if ret < 0 else str(ret)


@dataclass(slots=True)
class _Module:
    """The stories of one module."""

    row: ModuleRow
    loads: list[tuple[Load, LoadVerdict | None]] = field(default_factory=list)
    requests: list[tuple[Request, RequestVerdict | None]] = field(default_factory=list)


def _udev_unnamed(load: Load) -> bool:
    """A udev worker's load whose device no broadcast named (before the tracer attached,
    or a broadcast the hook missed): a lookup all the same, udev loads only for devices."""
    return load.device is None and load.request_id is None and is_worker(load.comm)


def _udev(load: Load) -> bool:
    return load.device is not None or _udev_unnamed(load)


def _attempt(load: Load, v: LoadVerdict | None) -> bool:
    """Counted as an attempt, as bymodule counts them."""
    return not (v is None or v.outcome == "unknown") or load.ret is not None


def _outcome(load: Load, v: LoadVerdict | None) -> str:
    if v is not None:
        return v.outcome
    return "unknown" if load.ret is None else "loaded" if load.ret == 0 else _errno(load.ret)


def _read(load: Load, v: LoadVerdict | None) -> int:
    """The bytes the call read: none for an idempotent() waiter."""
    return 0 if v is not None and v.converged else load.size


def _savings(loads: Iterable[tuple[Load, LoadVerdict | None]], spawns: int = 0) -> Savings:
    ls = list(loads)
    return Savings(attempts=len(ls), read_bytes=sum(_read(ld, v) for ld, v in ls),
                   wasted_bytes=sum(v.wasted_bytes for _, v in ls if v is not None),
                   load_ns=sum(ld.duration_ns or 0 for ld, _ in ls), modprobe_spawns=spawns)


def _saves(s: Savings) -> str:
    parts = []
    if s.attempts:
        parts.append(f"{s.attempts} load attempt(s)")
    if s.read_bytes:
        parts.append(f"{_bytes(s.read_bytes)} read")
    if s.wasted_bytes:
        parts.append(f"{_bytes(s.wasted_bytes)} wasted (MODULE_STATS)")
    if s.load_ns:
        parts.append(f"{_ms(s.load_ns)} in (f)init_module")
    if s.modprobe_spawns:
        parts.append(f"{s.modprobe_spawns} modprobe spawn(s)")
    return ", ".join(parts) or "nothing measurable"


def _names(names: Sequence[str], top: int = 4) -> str:
    more = len(names) - top
    return ", ".join(names[:top]) + (f" and {more} more" if more > 0 else "")


def _short(alias: str, room: int = 60) -> str:
    return alias if len(alias) <= room else alias[: room - 3] + "..."


class _Builder:
    def __init__(self, report: Report, info: ModulesInfo) -> None:
        self.r, self.info = report, info
        self.features = report.features

    def alias_cause(self, mod: str, loads: list[tuple[Load, LoadVerdict | None]]) -> list[str]:
        """udev's loads: per MODALIAS, the devices and the modules.alias pattern matched."""
        per_alias: dict[str, set[str]] = {}
        subsystems: dict[str, Counter[str]] = {}
        for ld, _ in loads:
            if ld.device is None:
                continue
            alias = ld.device.modalias
            per_alias.setdefault(alias, set()).add(ld.device.devpath)
            subsystems.setdefault(alias, Counter())[ld.device.subsystem or "?"] += 1
        out = []
        unnamed = [ld for ld, _ in loads if _udev_unnamed(ld)]
        if unnamed:
            out.append(f"udev: {len(unnamed)} load(s) by {len({ld.pid for ld in unnamed})} "
                       "of its workers for devices the trace does not name (no broadcast of "
                       "theirs was seen)")
        for alias, devs in sorted(per_alias.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            subs = " ".join(f"{s}:{n}" for s, n in subsystems[alias].most_common())
            head = f"udev: {len(devs)} device(s) ({subs})"
            if not alias:
                out.append(f"{head}, MODALIAS not in the trace")
                continue
            head += f", MODALIAS {_short(alias)}"
            if not self.info.found:
                out.append(f"{head} (pattern not resolved: {self.info.alias_path} not there)")
                continue
            hits = self.info.matches(alias)
            own = [p for p, m in hits if m == mod]
            if own:
                out.append(f"{head} matched modules.alias `{'`, `'.join(own)}`")
                continue
            via = sorted({m for _, m in hits if self.info.needs(m, mod)})
            if via:
                pats = [p for p, m in hits if m == via[0]]
                out.append(f"{head} matched `{pats[0]}` of {', '.join(via)}, which "
                           f"depend(s) on {mod} (modules.dep): loaded as a dependency")
            elif hits:
                out.append(f"{head} matched only other modules' patterns "
                           f"({', '.join(sorted({m for _, m in hits}))})")
            else:
                out.append(f"{head} matched no pattern in {self.info.alias_path}")
        return out

    def caller(self, req: Request) -> str:
        return self.r.ksyms.get(req.ip) or (hex(req.ip) if req.ip else "?")

    def request_cause(self, reqs: list[tuple[Request, RequestVerdict | None]]) -> list[str]:
        groups: dict[tuple[str, str], list[Request]] = {}
        for q, _ in reqs:
            groups.setdefault((self.caller(q), q.display_name), []).append(q)
        out = []
        for (caller, name), qs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            comms = Counter(q.comm for q in qs)
            status = Counter("no modprobe" if q.modprobe_exit is None
                             else decode_wait_status(q.modprobe_exit) for q in qs)
            out.append(f"kernel: {len(qs)} request(s) for {name} from {caller} "
                       f"(by {_counts(comms)}); modprobe {_counts(status)}")
        return out

    def other_cause(self, loads: list[tuple[Load, LoadVerdict | None]]) -> list[str]:
        others = [ld for ld, _ in loads if ld.device is None and ld.request_id is None
                  and not _udev_unnamed(ld)]
        if not others:
            return []
        return [f"user space: {len(others)} load(s) neither udev's nor a request's "
                f"(by {_counts(Counter(ld.comm for ld in others))})"]

    def advise(self, m: _Module) -> list[Advice]:
        mod = m.row.module
        loads = [(ld, v) for ld, v in m.loads if _attempt(ld, v)]
        cause = tuple(self.alias_cause(mod, loads) + self.request_cause(m.requests)
                      + self.other_cause(loads))
        outcomes = Counter(_outcome(ld, v) for ld, v in loads)
        failures = {k: n for k, n in outcomes.items() if k not in _NOT_FAILURES}
        ok = outcomes.get("loaded", 0)
        inits = [(ld, v) for ld, v in loads if ld.loaded and ld.init_ret not in (None, 0)]
        alias_loads = [(ld, v) for ld, v in loads if _udev(ld)
                       or (ld.request_id is not None and kmod_name(ld.alias) != mod)]
        devices = {ld.device.devpath for ld, _ in loads if ld.device is not None}
        patterns: list[str] = []
        base: list[str] = [f"{len(loads)} load attempt(s): {ok} loaded"
                           + (f", failed {_counts(failures)}" if failures else "")]
        # -- the patterns
        init_errnos = Counter(_errno(ld.init_ret or 0) for ld, _ in inits)
        never_binds = bool(loads) and ok == 0 and not (set(failures) & _LIVE) and bool(failures)
        if never_binds and len(failures) == 1 and len(loads) > 1:
            patterns.append("same-errno")
        if (never_binds and inits and failures.get("EBUSY")
                and set(failures) <= {"EBUSY", *init_errnos}):
            patterns.append("init-fails-racers-ebusy")
            base.append(f"init returned {_counts(init_errnos)} on {len(inits)} attempt(s) "
                        f"(the module was formed, its init failed); {failures['EBUSY']} "
                        "attempt(s) racing with it got EBUSY (found it GOING)")
        eexist = [(ld, v) for ld, v in loads if _outcome(ld, v) in _RACERS
                  and not (v is not None and v.converged)]
        dev_eexist = [(ld, v) for ld, v in eexist if _udev(ld)]
        lookups = len(devices) + sum(1 for ld, _ in loads if _udev_unnamed(ld))
        if ok >= 1 and dev_eexist and lookups > 1:
            patterns.append("per-device-alias")
            asked = (f"{len(devices)} devices asked for it" if lookups == len(devices) else
                     f"udev looked it up {lookups} times ({len(devices)} named devices)")
            how = Counter(_outcome(ld, v) for ld, v in dev_eexist)
            cut = {k: n for k, n in how.items() if k != "EEXIST"}
            got = [f"{how['EEXIST']} of their loads read the file and got EEXIST (it was "
                   "loaded already)"] if how["EEXIST"] else []
            if cut:
                got.append(f"{sum(cut.values())} read it and were interrupted "
                           f"({_counts({_RESTART.get(k, k): n for k, n in cut.items()})}: "
                           "a signal cut their wait for the first load "
                           "to finish)")
            base.append(f"{asked}; {'; '.join(got)}")
        converged = [(ld, v) for ld, v in loads if v is not None and v.converged]
        kdups = [q for q, _ in m.requests if q.kernel_verdict == "duplicate"]
        if converged or kdups:
            patterns.append("converged")
            if converged:
                base.append(f"{len(converged)} attempt(s) waited in idempotent() for the "
                            "first one and read nothing")
            if kdups:
                base.append(f"the kernel's dups.c answered {len(kdups)} request(s) without "
                            "modprobe")
        by_site: Counter[tuple[str, str]] = Counter(
            (self.caller(q), q.display_name) for q, _ in m.requests)
        repeats = {k: n for k, n in by_site.items() if n > 1}
        if repeats:
            patterns.append("kernel-caller-repeats")
        pats = tuple(patterns)
        out: list[Advice] = []
        # -- the advice
        if never_binds and alias_loads:
            out.append(self.blacklist(mod, pats, cause, base, loads, alias_loads, inits))
        if "per-device-alias" in patterns:
            out.append(self.preload(mod, pats, cause, base, loads, dev_eexist))
        if repeats:
            out.append(self.kernel_caller(mod, pats, cause, m, repeats))
        if not out:
            out.append(self.none(mod, pats, cause, base, loads, never_binds, converged,
                                 eexist))
        return out

    def lookups(self, mod: str, loads: list[tuple[Load, LoadVerdict | None]]
                ) -> tuple[bool, set[str], int]:
        """What udev's lookups for MOD's loads resolved to: whether a MODALIAS matched
        MOD's own pattern, the modules whose pattern matched and that need MOD
        (modules.dep), and how many loads' MODALIAS the trace lacks."""
        own, via, unknown = False, set(), 0
        for ld, _ in loads:
            if ld.device is None:
                continue
            if not ld.device.modalias or not self.info.found:
                unknown += 1
                continue
            hits = self.info.matches(ld.device.modalias)
            own = own or any(m == mod for _, m in hits)
            via |= {m for _, m in hits if m != mod and self.info.needs(m, mod)}
        return own, via, unknown

    def blacklist(self, mod: str, pats: tuple[str, ...], cause: tuple[str, ...],
                  base: list[str], loads: list[tuple[Load, LoadVerdict | None]],
                  alias_loads: list[tuple[Load, LoadVerdict | None]],
                  inits: list[tuple[Load, LoadVerdict | None]]) -> Advice:
        facts = [*base, f"not one attempt loaded it: it never bound on this machine "
                 f"(kernel {self.r.kernel})"]
        n_alias = len(alias_loads)
        facts.append(f"{n_alias} of the {len(loads)} attempts were alias lookups (udev's "
                     "MODALIAS or a kernel request's alias), which libkmod's blacklist stops")
        own, via, unknown = self.lookups(mod, alias_loads)
        targets = [mod]
        if via and not own:  # libkmod checks the blacklist of the looked-up module only
            targets = sorted(via)
            facts.append(f"udev's lookups matched {', '.join(targets)}, which need(s) {mod} "
                         f"(modules.dep); libkmod checks the blacklist of the module a "
                         f"lookup resolved to, not of its dependencies")
        elif unknown and self.info.found:
            users = sorted(m for m, deps in self.info.deps.items() if mod in deps)
            if users:
                facts.append(f"the MODALIAS of {unknown} load(s) is not in the trace; "
                             f"modules.dep lists {_names(users)} as needing {mod}: if the "
                             "lookup matched one of them, blacklist that one instead")
        words = ",".join(targets)
        lines_ = (f"a line `blacklist {targets[0]}`" if len(targets) == 1
                  else "a `blacklist` line for each")
        text = (f"blacklist {' '.join(targets)} on this machine: {lines_} in "
                f"/etc/modprobe.d/, or `modprobe.blacklist={words}` on the kernel command "
                "line; libkmod then skips the alias load before reading the file (not "
                f"`module_blacklist={words}`: the kernel refuses that only after the read, "
                "which saves nothing)")
        return Advice(mod, pats, cause, "blacklist", text, tuple(facts), _savings(alias_loads),
                      tuple(targets))

    def preload(self, mod: str, pats: tuple[str, ...], cause: tuple[str, ...],
                base: list[str], loads: list[tuple[Load, LoadVerdict | None]],
                dev_eexist: list[tuple[Load, LoadVerdict | None]]) -> Advice:
        facts = list(base)
        syscalls = {ld.syscall for ld, _ in dev_eexist}
        if not self.features.idempotent:
            facts.append(f"kernel {self.r.kernel} has no idempotent() (6.5+): concurrent "
                         "finit_module calls of one file each read it")
        elif syscalls == {"init_module"}:
            facts.append("the loads were init_module calls (kmod decompressing the module "
                         "itself), which idempotent() does not converge")
        else:
            facts.append("this kernel has idempotent(), yet these loads were not converged "
                         "by it: each read the file")
        could = [(ld, v) for ld, v in dev_eexist if v is not None and v.would_converge]
        if could and not self.features.idempotent:
            saved = sum(v.bytes_saved for _, v in could if v is not None)
            facts.append(f"a kernel with idempotent() would have converged {len(could)} of "
                         f"them ({_bytes(saved)} of MODULE_STATS bytes)")
        _own, via, _unknown = self.lookups(mod, dev_eexist)
        loaded = sorted(m for m in via if (row := self.r.by_module.get(m)) is not None
                        and row.ok > 0)
        target = mod
        if loaded and not _own:  # the module the lookups matched pulls this one in
            target = loaded[0]
            facts.append(f"udev's lookups matched {', '.join(loaded)}, which need(s) {mod} "
                         f"(modules.dep) and loaded: preloading {target} loads {mod} too")
        text = (f"load {target} once, early: a line `{target}` in "
                f"/etc/modules-load.d/{target}.conf, "
                "with systemd-modules-load.service ordered before "
                "systemd-udev-trigger.service (a drop-in with "
                "`Before=systemd-udev-trigger.service`: they are not ordered by default), "
                "so that udev's later lookups find it live and load nothing")
        return Advice(mod, pats, cause, "preload", text, tuple(facts), _savings(dev_eexist),
                      (target,))

    def kernel_caller(self, mod: str, pats: tuple[str, ...], cause: tuple[str, ...],
                      m: _Module, repeats: Mapping[tuple[str, str], int]) -> Advice:
        (site, name), n = max(repeats.items(), key=lambda kv: (kv[1], kv[0]))
        func = (f"the call site {site} (no symbol for it in the trace)"
                if site.startswith("0x") or site == "?" else site.split("+", 1)[0])
        reqs = [(q, v) for q, v in m.requests if (self.caller(q), q.display_name) in repeats]
        facts = [f"{site} asked for {name} {n} times"]
        facts += [f"{s} asked for {nm} {k} times" for (s, nm), k in sorted(repeats.items())
                  if (s, nm) != (site, name)]
        spawns = sum(1 for q, _ in reqs if q.modprobe_pid is not None)
        facts.append(f"{spawns} modprobe helper(s) ran for these requests")
        dup_ids = {q.id for q, v in reqs if v is not None and v.verdict == "duplicate"}
        saved_spawns = sum(1 for q, v in reqs if v is not None and v.modprobe_saved)
        remedies = ["check before asking, as try_then_request_module() does"]
        extra = [(ld, v) for ld, v in m.loads if ld.request_id in dup_ids]
        savings = Savings()
        if not self.features.dups and dup_ids:
            facts.append(f"a kernel with dups.c (CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS, 6.4+) "
                         f"would have judged {len(dup_ids)} of them duplicates and run "
                         f"{saved_spawns} fewer modprobe(s)")
            remedies.append("run a kernel with dups.c (CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS), which "
                            "runs one modprobe for concurrent requests of one name")
            savings = _savings(extra, saved_spawns)
        loads = [(ld, v) for ld, v in m.loads if ld.request_id is not None
                 and _outcome(ld, v) == "EEXIST"]
        could = [v for _, v in loads if v is not None and v.would_converge]
        if not self.features.idempotent and could:
            facts.append(f"{len(loads)} of their modprobes' loads read the file and got EEXIST;"
                         f" idempotent() (6.5+) would have converged {len(could)}")
            remedies.append("run a kernel with idempotent() (6.5+), which makes concurrent "
                            "finit_module calls of one file wait instead of reading it")
        statuses = Counter("no modprobe" if q.modprobe_exit is None
                           else decode_wait_status(q.modprobe_exit) for q, _ in reqs)
        facts.append(f"modprobe {_counts(statuses)}")
        text = f"the kernel asks from {func}: {'; or '.join(remedies)}"
        return Advice(mod, pats, cause, "kernel-caller", text, tuple(facts), savings)

    def none(self, mod: str, pats: tuple[str, ...], cause: tuple[str, ...], base: list[str],
             loads: list[tuple[Load, LoadVerdict | None]], never_binds: bool,
             converged: Sequence[tuple[Load, LoadVerdict | None]],
             eexist: list[tuple[Load, LoadVerdict | None]]) -> Advice:
        facts = list(base)
        if never_binds:
            why = ("it never bound, but no attempt was an alias lookup: libkmod's blacklist "
                   "does not stop a load by name")
        elif converged and not eexist:
            why = "the kernel converged the repeats already: they read nothing"
        elif eexist:
            why = ("its repeats were not udev's per-device lookups nor a repeating kernel "
                   "caller: whoever ran them has to stop")
        else:
            why = "the repeats failed in no way kmodtrace has a remedy for"
        return Advice(mod, pats, cause, "none", f"no advice applies: {why}", tuple(facts), None)


def repeated(row: ModuleRow) -> bool:
    """A module advice is given for: tried more than once, or requested more than once."""
    return row.attempts > 1 or row.requests > 1


def build(report: Report, modules_dir: str | None = None,
          info: ModulesInfo | None = None) -> AdviceSet:
    """The advice for every repeated module of REPORT, most wasted first."""
    rows = {k: r for k, r in report.by_module.items() if repeated(r)}
    if info is None:
        info = (read_modules_info(report.kernel, modules_dir) if rows
                else ModulesInfo("", False))
    mods = {k: _Module(r) for k, r in rows.items()}
    acc = ByModule()
    for ld, lv in report.loads:
        acc.add_load(ld, lv)
        if ld.module in mods:
            mods[ld.module].loads.append((ld, lv))
    for q, qv in report.requests:
        for mod in acc.modules_of(q.display_name) or {q.display_name}:
            if mod in mods:
                mods[mod].requests.append((q, qv))
    b = _Builder(report, info)
    items: list[Advice] = []
    for m in sorted(mods.values(), key=lambda m: (-m.row.wasted_bytes, -m.row.attempts,
                                                  m.row.module)):
        items += b.advise(m)
    return AdviceSet(tuple(items), info.alias_path, info.found)


def lines(advice: AdviceSet, wide: bool = False, width: int = 100) -> list[str]:
    """The text section: per module its patterns, cause chain, and each piece of advice
    with its facts and savings. Raw text: the caller shows it escaped."""
    import textwrap

    if not advice.items:
        return []

    def wrap(text: str, indent: str) -> list[str]:
        if wide:
            return [indent + text]
        return textwrap.wrap(text, width, initial_indent=indent,
                             subsequent_indent=indent + "  ", break_on_hyphens=False)

    out = ["", "why, and what to do (per module tried or requested more than once):"]
    if not advice.alias_found and advice.modules_alias:
        out += wrap(f"{advice.modules_alias} is not there: udev's MODALIAS patterns are "
                    "not resolved", "")
    last = None
    for a in advice.items:
        if a.module != last:
            last = a.module
            pats = "; ".join(PATTERNS[p] for p in a.patterns) or "no known pattern"
            out += wrap(f"{a.module}: {pats}", "")
            for c in a.cause:
                out += wrap(f"cause: {c}", "  ")
        out += wrap(f"advice ({a.kind}): {a.text}", "  ")
        for f in a.facts:
            out += wrap(f"fact: {f}", "    ")
        if a.savings is not None:
            out += wrap(f"saves: {_saves(a.savings)}", "    ")
    return out
