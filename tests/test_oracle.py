"""Parity with the kernel itself: the oracle kernels (Debian's linux-source-6.12 and
linux-source-7.3 with MODULE_DEBUG_AUTOLOAD_DUPS and MODULE_STATS, their modules signed,
xz decompression in the kernel) judge every request and count every failed load; the
model must agree, on dups.c's deferred form (6.12) and on its refcount form (7.3).

Every check runs on each golden recording of an oracle run (tests/data/oracle-RELEASE:
the trace, live's stories, dmesg and the MODULE_STATS files, replayed in seconds by
`make test`), and on a live run of each oracle with `make oracle` (pytest -m oracle),
which builds the oracle kernel the first time (cached in ~/.cache/kmodtrace/oracle; 14
to 88 minutes on 2 cores for 6.12, about as long for 7.3) and boots it.
`kmodtrace parity [--source 7.3] --save-golden DIR` records a new golden from a passing
live run.
"""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from kmodlab import oracle, parity, storms, vm
from tracer import report
from tracer.record import read_trace
from tracer.session import listed_hooks, replay

GOLDEN = sorted((Path(__file__).resolve().parent / "data").glob("oracle-*"))


def test_a_golden_oracle_recording_is_replayed() -> None:
    """Without one, `make test` would prove nothing against the kernel's dups.c."""
    assert GOLDEN, "no tests/data/oracle-* golden recording"
    for g in GOLDEN:
        assert {p.name.removesuffix(".zst") for p in g.iterdir()} == set(oracle.GOLDEN_FILES)


def test_the_6_12_oracle_keeps_its_cache_key() -> None:
    """A second source series must not rebuild the 6.12 oracle (its build is keyed by the
    source version and CONFIG alone), and 7.3's extra items give it a key of its own."""
    assert oracle.config_key("6.12.95-1~bpo12+1", oracle.series("6.12").config) == \
        "5119e8db7676"
    assert oracle.config_key("6.12.95-1~bpo12+1") == "5119e8db7676"
    assert oracle.series("7.3").suite == "trixie-backports"
    assert set(oracle.CONFIG) < set(oracle.series("7.3").config)
    with pytest.raises(vm.VMError, match=r"6\.12 or 7\.3"):
        oracle.series("6.1")


def _live_oracle(tmp_path_factory: pytest.TempPathFactory, source: str) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the oracle needs root (apt, kernel build, QEMU)")
    progress = lambda m: print(f"[oracle] {m}", flush=True)  # noqa: E731
    kern = oracle.build(progress, source=source)
    out = tmp_path_factory.mktemp("oracle")
    console = tmp_path_factory.mktemp("oracle-console") / "console.log"
    rc = vm.run_guest(kern, out, ["--scenarios", "oracle"], progress, timeout=2400,
                      append=oracle.BOOT_ARGS, console=console)
    fault = vm.console_fault(console)
    if fault:
        # Printed whether or not the guest finished, and never retried away while its
        # cause is unproven. The one seen (an int3 oops at ttwu_do_activate+0x88, after
        # every result was written) trapped at the sched:sched_wakeup tracepoint's
        # static-key NOP, which nothing of kmodtrace attaches: ftrace switches it
        # whenever tracefs events go on or off (trace_sched_switch.c's cmdline
        # recording), as the witness does. An int3 left after text_poke_bp()'s syncs
        # points at the emulator, but that is not shown.
        print("[oracle] the guest kernel reported a fault:", *fault, sep="\n    ", flush=True)
    logs = "".join(p.read_text()[-2000:] for p in out.glob("*.log"))
    tail = "\n".join(fault) if fault else (
        console.read_text(errors="replace")[-2000:] if console.exists() else "")
    assert rc == 0 and not fault, f"oracle guest failed with {rc}: {logs}\nconsole: {tail}"
    return out


@pytest.fixture(scope="module", params=[
    *[pytest.param(g, id=g.name) for g in GOLDEN],
    *[pytest.param(source, id=f"live-{source}", marks=[pytest.mark.vm, pytest.mark.oracle])
      for source in oracle.SERIES],
])
def oracle_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    param: Path | str = request.param
    if isinstance(param, str):
        return _live_oracle(tmp_path_factory, param)
    return oracle.open_golden(param, tmp_path_factory.mktemp(param.name))


def _late_announce_ran(golden: Path) -> bool:
    manifest = orjson.loads((golden / "manifest.json").read_bytes())
    return any(d["generator"] == "late-announce" and d["statuses"][0] >= 0
               for d in manifest["scenarios"])


# The late-announce storm needs fanotify permission events: the 7.3 oracle has them; the
# 6.12 golden was recorded before the storm, and its cached build (whose key stays) has
# no fanotify, so its live run records -ENOSYS there. Only where it ran is it checked.
LATE_GOLDEN = [g for g in GOLDEN if _late_announce_ran(g)]


@pytest.fixture(scope="module", params=[
    *[pytest.param(g, id=g.name) for g in LATE_GOLDEN],
    pytest.param("7.3", id="live-7.3", marks=[pytest.mark.vm, pytest.mark.oracle]),
])
def late_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    param: Path | str = request.param
    if isinstance(param, str):
        return _live_oracle(tmp_path_factory, param)
    return oracle.open_golden(param, tmp_path_factory.mktemp(param.name))


def test_the_late_announce_is_in_a_golden() -> None:
    assert [g.name for g in LATE_GOLDEN] == ["oracle-7.3"]


def test_a_golden_recording_per_dups_form(tmp_path: Path) -> None:
    """The deferred form (6.12) and the refcount form (7.3) are both proven by `make test`,
    each detected from the oracle's own dups.c (struct kmod_dup_req in its BTF)."""
    features = [read_trace(str(oracle.open_golden(g, tmp_path / g.name) / "trace.jsonl"))
                .features for g in GOLDEN]
    assert {(f.announce, f.announce_source) for f in features} == {
        ("deferred", "detected"), ("first", "detected")}


def test_parity_is_n_of_n(oracle_out: Path) -> None:
    par = parity.run(oracle_out)
    report = "\n".join(parity.render(par))
    print(report)
    assert par.ok, report
    assert par.requests_checked >= 150, report
    assert par.stats_checked >= 9, report
    # kmod.sh 0009 and the 60-thread storm: more than 50 wait requests at once
    assert par.throttle_checked >= 62 and par.throttle_queued > 0, report


def test_the_storms_hit_every_failure_class(oracle_out: Path) -> None:
    """Each MODULE_STATS class the parity figures cover was exercised for real."""
    trace = read_trace(str(oracle_out / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    assert trace.features.module_sig and trace.features.module_stats
    by = {(ld.module or ld.syscall, ld.ret) for ld, _ in rep.loads}
    assert ("efivarfs", -errno.EPERM) in by  # blacklisted()
    assert ("kmodstorm_fail", -errno.EINVAL) in by  # parse_args()
    assert ("kmodstorm_fail", -errno.ENODEV) in by  # its init
    assert ("init_module", -errno.EFAULT) in by  # copy_module_from_user()
    xz = [(ld, v) for ld, v in rep.loads if ld.flags & 4]
    assert any(ld.loaded for ld, _ in xz)  # the kernel decompressed and loaded one
    assert any(v is not None and v.byte_class == "decompress" for _, v in xz)
    # signed: info->len is the file less its signature
    tun = [ld for ld, _ in rep.loads if ld.module == "tun" and ld.mod_len is not None]
    assert tun and all(ld.mod_len is not None and ld.mod_len < ld.size for ld in tun)
    # module_sig_check() missed nothing here: no failure is charged a len it did not see
    assert not [ld for ld, v in rep.loads if v is not None and v.len_unknown]


def test_every_kernel_duplicate_is_logged_once(oracle_out: Path) -> None:
    """The kernel's dmesg line per duplicate equals the duplicates its kretprobe returned."""
    trace = read_trace(str(oracle_out / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    kernel_dups = Counter(r.name for r, _ in rep.requests if r.kernel_dup)
    # Only what the kernel logged while the tracer ran (boot-time requests came before);
    # dmesg stamps are seconds since boot, the trace's CLOCK_MONOTONIC ns: the same clock
    # here (nothing suspends the VM).
    start = trace.header["start_mono_ns"] / 1e9
    end = (trace.trailer or {})["end_mono_ns"] / 1e9
    logged: Counter[str] = Counter()
    for line in (oracle_out / "dmesg.txt").read_text().splitlines():
        m = re.match(r"\[\s*(\d+\.\d+)\] .*duplicate request for module (\S*)$", line)
        if m and start <= float(m[1]) <= end:
            logged[m[2]] += 1
    assert kernel_dups and kernel_dups == logged


def test_duplicates_run_no_modprobe_on_the_oracle(oracle_out: Path) -> None:
    trace = read_trace(str(oracle_out / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    for req, _ in rep.requests:
        if req.kernel_dup:
            assert req.modprobe_pid is None and req.umh_start_ns is None
        elif req.kernel_dup is False:
            assert req.modprobe_pid is not None


def test_live_verdicts_equal_the_replay(oracle_out: Path) -> None:
    """What `live` judged in the guest as events came is what a replay of its recording
    judges: on a kernel with dups.c, where arrival order decides verdicts, both order
    arrivals the same way."""
    _, rep = report.load(str(oracle_out / "trace.jsonl"))  # what `kmodtrace report` does
    offline = {(r.tid, r.start_ns): (v.verdict if v else None, v.predicted_ret if v else None,
                                     r.ret) for r, v in rep.requests}
    stories = [orjson.loads(line) for line in (oracle_out / "live.out").read_bytes().splitlines()]
    live = {(d["tid"], d["start_ns"]): (d["verdict"], d["predicted_ret"], d["ret"])
            for d in stories if d["type"] == "request"}
    assert len(live) >= 150 and sum(v[0] == "duplicate" for v in live.values()) >= 50
    differ = {k: (live.get(k), offline.get(k)) for k in live.keys() | offline.keys()
              if live.get(k) != offline.get(k)}
    assert not differ, f"{len(differ)} requests (tid, start): (live, replay): {differ}"


def test_a_late_announce_tells_the_forms_apart(late_out: Path) -> None:
    """The late-announce storm (storms.late_announce): an untracked nowait request
    announces 0 after the entry's first announce (256), then wait duplicates come inside
    the tail. The kernel hands them the value its form keeps, the model agrees, and the
    model running the other form disagrees on exactly those duplicates."""
    oracle_out = late_out
    manifest = orjson.loads((oracle_out / "manifest.json").read_bytes())
    (sc,) = [d for d in manifest["scenarios"] if d["generator"] == "late-announce"]
    assert sc["statuses"][0] >= 0, sc
    name = storms.Scenario(**sc).request_names[0]
    trace = read_trace(str(oracle_out / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile, hooks=listed_hooks(trace.header))
    reqs = [(r, v) for r, v in rep.requests if r.name == name]
    (anchor, _), = [(r, v) for r, v in reqs if r.wait and r.kernel_dup is False]
    (late, _), = [(r, v) for r, v in reqs if not r.wait]
    dups = [(r, v) for r, v in reqs if r.kernel_dup]
    assert anchor.ret == 256 and late.ret == 0 and not late.kernel_dup
    # the untracked request announced after the anchor: the entry was complete already
    assert anchor.kernel_announce_ns is not None and late.kernel_announce_ns is not None
    assert anchor.kernel_announce_ns < late.kernel_announce_ns
    assert len(dups) == sc["count"]
    assert all(r.start_ns > late.kernel_announce_ns for r, _ in dups)
    kept = {"first": anchor.ret, "deferred": late.ret}[trace.features.announce]
    assert [r.kernel_dup_ret for r, _ in dups] == [kept] * len(dups)
    assert [v.predicted_ret if v else None for _, v in dups] == [kept] * len(dups)
    other = "deferred" if trace.features.announce == "first" else "first"
    par = parity.run(oracle_out, other)
    assert len(par.mismatches) == len(dups)
    assert all(name in m.what and "model predicts ret" in m.detail for m in par.mismatches)
