"""Correlation on a recorded trace (a real 6.1 VM run) and on hand-made sequences."""

from __future__ import annotations

import errno
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tracer.correlate import STALE_NS, Correlator
from tracer.events import Event, Kind
from tracer.model import PROFILE_6_1, Model
from tracer.model import STALE_NS as MODEL_STALE_NS
from tracer.record import read_trace
from tracer.session import replay
from tracer.stories import Load, Request, decode_wait_status, module_from_path
from tracer.udev import Device

DATA = Path(__file__).parent / "data" / "vm-6.1"


class Collect:
    def __init__(self) -> None:
        self.arrived: list[int] = []
        self.returned: list[int] = []
        self.requests: list[Request] = []
        self.loads: list[Load] = []
        self.freed: list[str] = []
        self.devices: list[tuple[int, Device]] = []

    def request_arrive(self, req: Request) -> None:
        self.arrived.append(req.id)

    def request_return(self, req: Request) -> None:
        self.returned.append(req.id)

    def request_complete(self, req: Request) -> None:
        self.requests.append(req)

    def load_start(self, load: Load) -> None:
        pass

    def load_complete(self, load: Load) -> None:
        self.loads.append(load)

    def module_free(self, ev: Event) -> None:
        self.freed.append(ev.name)

    def device_done(self, pid: int, device: Device) -> None:
        self.devices.append((pid, device))


def feed(events: list[Event]) -> Collect:
    sink = Collect()
    corr = Correlator(sink)
    for ev in events:
        corr.feed(ev)
    return sink


def E(kind: Kind, ts: int, pid: int, tid: int | None = None, **kw: Any) -> Event:
    return Event(ts_ns=ts, kind=int(kind), pid=pid, tid=pid if tid is None else tid, **kw)


def test_wait_request_joined_to_modprobe_and_its_load() -> None:
    evs = [
        E(Kind.REQ_ENTER, 10, 100, comm="ip", wait=1, name="rtnl-link-%s", path="ifb", ip=0xAB),
        E(Kind.REQ_TP, 12, 100, wait=1, name="rtnl-link-ifb", ip=0xDEAD),
        E(Kind.UMH_ENTER, 13, 100, ptr=0xF00, path="/sbin/modprobe", name="rtnl-link-ifb",
          wait=6),
        E(Kind.UMH_SPAWN, 14, 200, ptr=0xF00),
        E(Kind.INIT_ENTER, 20, 200, comm="modprobe", size=26998),
        E(Kind.MOD_LOAD, 21, 200, name="ifb"),
        E(Kind.MODINIT_ENTER, 22, 200),
        E(Kind.MODINIT_EXIT, 25, 200, ret=0),
        E(Kind.INIT_EXIT, 26, 200, ret=0, name="ifb"),
        E(Kind.HELPER_EXIT, 27, 200, ptr=0xF00, ret=0),
        E(Kind.UMH_EXIT, 28, 100, ret=0),
        E(Kind.REQ_EXIT, 29, 100, ret=0),
    ]
    out = feed(evs)
    [req] = out.requests
    [load] = out.loads
    assert (req.name, req.wait, req.queue_ns, req.duration_ns) == ("rtnl-link-ifb", True, 2, 19)
    assert req.ip == 0xAB  # the entry's call site, not the tracepoint's trampoline
    assert (req.umh_path, req.umh_name, req.umh_wait) == ("/sbin/modprobe", "rtnl-link-ifb", 6)
    assert (req.modprobe_pid, req.modprobe_exit, req.load_ids) == (200, 0, (load.id,))
    assert load.request_id == req.id and load.loaded and load.module == "ifb"
    assert (load.init_ns, load.init_ret, load.size, load.syscall) == (3, 0, 26998, "init_module")
    assert out.arrived == out.returned == [req.id]


def test_nowait_request_completes_when_its_modprobe_exits() -> None:
    evs = [
        E(Kind.REQ_ENTER, 1, 5, wait=0, name="%s", path="ifb"),
        E(Kind.REQ_TP, 2, 5, wait=0, name="ifb"),
        E(Kind.UMH_ENTER, 3, 5, ptr=0x1, wait=5),
        E(Kind.UMH_SPAWN, 4, 60, ptr=0x1),
        E(Kind.UMH_EXIT, 5, 5, ret=0),
        E(Kind.REQ_EXIT, 6, 5, ret=0),
    ]
    out = feed(evs)
    assert out.returned and not out.requests  # modprobe still running
    out2 = feed([*evs, E(Kind.HELPER_EXIT, 9, 60, ptr=0x1, ret=256)])
    [req] = out2.requests
    assert not req.wait and req.modprobe_exit == 256
    assert decode_wait_status(256) == "exit 1"


def test_rejected_request_is_named_from_its_format() -> None:
    evs = [E(Kind.REQ_ENTER, 1, 9, wait=1, name="fs-%s", path="xfs"),
           E(Kind.REQ_EXIT, 2, 9, ret=-errno.ENOENT)]
    [req] = feed(evs).requests
    assert req.rejected and req.display_name == "fs-xfs" and req.ret == -errno.ENOENT


def test_interleaved_requests_join_by_thread() -> None:
    evs = [E(Kind.REQ_ENTER, 1, 1, tid=11, wait=1, name="%s", path="a"),
           E(Kind.REQ_ENTER, 2, 1, tid=12, wait=1, name="%s", path="b"),
           E(Kind.REQ_TP, 3, 1, tid=12, wait=1, name="b"),
           E(Kind.REQ_TP, 4, 1, tid=11, wait=1, name="a"),
           E(Kind.REQ_EXIT, 5, 1, tid=11, ret=0),
           E(Kind.REQ_EXIT, 6, 1, tid=12, ret=256)]
    reqs = {r.name: r for r in feed(evs).requests}
    assert (reqs["a"].tid, reqs["a"].ret) == (11, 0)
    assert (reqs["b"].tid, reqs["b"].ret) == (12, 256)


def test_failed_load_takes_the_name_the_kernel_looked_up() -> None:
    evs = [E(Kind.FINIT_ENTER, 1, 7, path="xfs.ko.xz", ino=42, dev=3, size=100, flags=4),
           E(Kind.FINIT_EXIT, 2, 7, ret=-errno.EEXIST, name="xfs")]
    [load] = feed(evs).loads
    assert (load.module, load.inode, load.flags, load.loaded) == ("xfs", (3, 42), 4, False)
    assert module_from_path("snd-hda-intel.ko.zst") == "snd_hda_intel"


def test_unknown_kinds_and_orphans_are_counted_not_fatal() -> None:
    sink = Collect()
    corr = Correlator(sink)
    corr.feed(Event(ts_ns=1, kind=99))
    corr.feed(E(Kind.REQ_EXIT, 2, 3, ret=0))
    corr.feed(E(Kind.FINIT_EXIT, 3, 3, ret=0))
    assert corr.unjoined == 2 and corr.events == 3 and not sink.requests


def test_stale_stories_are_swept() -> None:
    sink = Collect()
    corr = Correlator(sink)
    corr.feed(E(Kind.REQ_ENTER, 1, 1, wait=1))  # its exit is never seen
    corr.feed(E(Kind.FINIT_ENTER, 2, 2))
    assert corr.open_stories == 2
    corr.feed(E(Kind.MOD_FREE, STALE_NS * 2, 3, name="x"))
    assert corr.open_stories == 0 and sink.freed == ["x"]


def test_kernel_dups_verdict_and_announce_join_the_request_by_thread() -> None:
    """kmod_dup_request_exists_wait() and call_modprobe()'s kmod_dup_request_announce()
    run in the requesting task, inside __request_module()."""
    sink = feed([
        E(Kind.REQ_ENTER, 1, 5, wait=1), E(Kind.REQ_TP, 2, 5, wait=1, name="fs-xfs"),
        E(Kind.DUP_VERDICT, 3, 5, wait=0, ret=0),
        E(Kind.DUP_ANNOUNCE, 8, 5, name="fs-xfs", ret=256),
        E(Kind.DUP_ANNOUNCE, 8, 6, name="fs-xfs", ret=0),  # another task's: not joined
        E(Kind.REQ_EXIT, 9, 5, ret=256),
    ])  # fmt: skip
    (req,) = sink.requests
    assert (req.kernel_verdict, req.kernel_ret) == ("first", 256)
    assert (req.kernel_announce_ns, req.kernel_announce_ret) == (8, 256)


def test_one_stale_limit_for_correlator_and_model() -> None:
    assert STALE_NS == MODEL_STALE_NS == Model(PROFILE_6_1).stale_ns


@pytest.fixture(scope="module")
def recorded() -> tuple[list[Request], list[Load]]:
    trace = read_trace(str(DATA / "trace.jsonl"))
    rep = replay(trace.events, PROFILE_6_1)
    return [r for r, _ in rep.requests], [ld for ld, _ in rep.loads]


def test_recorded_storm_counts(recorded: tuple[list[Request], list[Load]]) -> None:
    reqs, loads = recorded
    names = Counter(r.name for r in reqs)
    assert names["dummy"] == 50 and names["kmt-no-such-module"] == 5 and names["ifb"] == 10
    assert all(r.modprobe_pid is not None for r in reqs)
    assert len({r.modprobe_pid for r in reqs}) == len(reqs)
    ok = Counter(ld.module for ld in loads if ld.loaded)
    assert ok["dummy"] == ok["xfs"] == ok["minix"] == ok["appletalk"] == 1


def test_recorded_loads_join_their_request(recorded: tuple[list[Request], list[Load]]) -> None:
    reqs, loads = recorded
    by_id = {r.id: r for r in reqs}
    for ld in loads:
        if ld.request_id is not None:
            assert by_id[ld.request_id].modprobe_pid == ld.pid
            assert ld.id in by_id[ld.request_id].load_ids
    # the udev-like modprobe storm has no request behind it
    assert all(ld.request_id is None for ld in loads if ld.module == "xfs")


def test_recorded_trace_matches_its_witness() -> None:
    from kmodlab.witness import parse

    witness = parse((DATA / "witness.txt").read_text())
    trace = read_trace(str(DATA / "trace.jsonl"))
    mine = Counter(e.name for e in trace.events if e.kind == Kind.REQ_TP)
    theirs = Counter(w.name for w in witness if w.event == "module_request")
    assert mine == theirs
    manifest = json.loads((DATA / "manifest.json").read_text())
    assert manifest["scenarios"][0]["name"] == "kthread-50"


def test_recorded_612_storm_uses_init_module_and_the_patient_check() -> None:
    """Debian 6.12's kmod decompresses .ko.xz itself and calls init_module()."""
    trace = read_trace(str(Path(__file__).parent / "data" / "vm-6.12" / "trace.jsonl"))
    profile = trace.features.profile
    assert (profile.idempotent, profile.patient) == (True, True)
    rep = replay(trace.events, profile)
    xfs = [(ld, v) for ld, v in rep.loads if ld.module == "xfs"]
    assert len(xfs) == 8 and all(ld.syscall == "init_module" for ld, _ in xfs)
    assert sum(ld.loaded for ld, _ in xfs) == 1
    failed = [v for ld, v in xfs if not ld.loaded]
    assert all(v is not None and v.outcome == "EEXIST" and v.rule == "patient-becoming"
               for v in failed)
    # init_module never converges by inode, and a becoming failure costs len bytes
    assert all(v is not None and not v.would_converge for v in failed)
    assert all(v is not None and v.wasted_bytes == ld.size for (ld, v) in xfs if not ld.loaded)


def test_module_length_after_its_signature_joins_the_open_load() -> None:
    # module_sig_check's return carries info->len: the signed file is 1000 bytes, the
    # module without its signature 700; MODULE_STATS counts 700 per copy.
    evs = [E(Kind.FINIT_ENTER, 1, 7, path="xfs.ko", ino=42, dev=3, size=1000),
           E(Kind.MOD_LEN, 2, 7, size=700),
           E(Kind.MOD_LEN, 2, 8, size=5),  # another thread's load: not this one
           E(Kind.FINIT_EXIT, 3, 7, ret=-errno.EEXIST, name="xfs")]
    [load] = feed(evs).loads
    assert (load.size, load.mod_len) == (1000, 700)
    model = Model(PROFILE_6_1)
    model.load_start(load)
    assert model.load_done(load).wasted_bytes == 2 * 700  # pre-6.4: exists after layout


def test_udev_worker_loads_take_the_device_it_broadcasts_next() -> None:
    props = "UDEV_DATABASE_VERSION=1\nACTION=add\nDEVPATH=/devices/system/cpu/cpu3\nSUBSYSTEM=cpu\n"
    evs = [E(Kind.FINIT_ENTER, 1, 9, comm="(udev-worker)", path="acpi-cpufreq.ko", ino=5,
             size=10),
           E(Kind.FINIT_EXIT, 2, 9, comm="(udev-worker)", ret=-errno.EBUSY, name="acpi_cpufreq"),
           E(Kind.UDEV_DEVICE, 3, 9, comm="(udev-worker)", path=props)]
    rep = replay(evs, PROFILE_6_1, modaliases={"/devices/system/cpu/cpu3": "cpu:type:x86"})
    [(load, verdict)] = rep.loads
    assert load.device == Device("/devices/system/cpu/cpu3", "cpu", "add", "cpu:type:x86")
    assert verdict is not None and verdict.outcome == "EBUSY"
    # without the broadcast the load is still reported, with no device
    [(orphan, _)] = replay(evs[:2], PROFILE_6_1).loads
    assert orphan.device is None


def test_load_info_len_offset_follows_btf() -> None:
    from tracer.kernel import load_info_len_offset

    assert load_info_len_offset(lambda s, f: True) == 24
    assert load_info_len_offset(lambda s, f: None) == 24  # no BTF: the 6.x layout
    assert load_info_len_offset(lambda s, f: False) == 8
