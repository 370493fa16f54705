"""udev device attribution from the kernel's boot-time trace: the udev probe of tracer/early.py.

tests/data/vm-6.1-early-udev/ holds what a plain virtme-ng guest of Debian 6.1 recorded with
the words of `kmodtrace boot cmdline` on its kernel command line (kprobe_events as the
kernel listed the definitions, and an excerpt of the global buffer: the initramfs's
loads, kernel uevents, and udev workers' broadcasts and loads after `systemd-udevd
--daemon; udevadm trigger --action=add; udevadm settle`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.test_early_convert import convert
from tracer import early, tracefs
from tracer.events import PATH_LEN, Kind
from tracer.model import PROFILE_6_1
from tracer.session import replay
from tracer.udev import device_from_properties, is_worker

DATA = Path(__file__).parent / "data" / "vm-6.1-early-udev"


@pytest.fixture(scope="module")
def text() -> str:
    return (DATA / "trace.txt").read_text()


class FakeBTF:
    """What udev_probe() asks of BTF, as Debian's 6.1 has it."""

    def __init__(self, functions: set[str]) -> None:
        self.functions = functions

    def has_function(self, name: str) -> bool:
        return name in self.functions

    def offset(self, struct: str, member: str) -> int:
        return {("sk_buff", "data"): 208}[(struct, member)]


def test_the_kernel_lists_the_probe_as_defined() -> None:
    """The kernel took the definition from its command line and lists it back as
    definition() writes it (a drain ignores a probe whose listing differs)."""
    probe = early.udev_probe(FakeBTF({"netlink_broadcast"}), early.REGS["x86_64"])  # type: ignore[arg-type]
    assert probe is not None
    listed = [ln for ln in (DATA / "kprobe_events").read_text().splitlines()
              if ln.startswith(("p:kmt/udev ", "r"))]
    assert probe.definition() in listed
    assert early.udev_probe(FakeBTF(set()), early.REGS["x86_64"]) is None  # type: ignore[arg-type]


def test_broadcasts_become_the_device_events_bpf_sends(text: str) -> None:
    """Each udev worker's broadcast to the udev group is one UDEV_DEVICE event, its
    properties newline-separated and cut where the BPF program cuts them; the kernel's own
    uevents (group 1) are none."""
    lines = [ln for raw in text.splitlines()
             if (ln := tracefs.parse_line(raw)) is not None and ln.event == "udev"]
    groups = Counter(tracefs.fields(ln.rest)["grp"] for ln in lines)
    assert groups["1"] > 0 and groups["2"] > 0
    conv = convert(text)
    assert conv.unparsed == 0
    devices = [e for e in conv.events if e.kind == Kind.UDEV_DEVICE]
    assert len(devices) == groups["2"]
    for e in devices:
        assert is_worker(e.comm) and e.pid == e.tid, e
        assert len(e.path) <= PATH_LEN - 1
        assert e.path.startswith("UDEV_DATABASE_VERSION=1\nACTION=add\nDEVPATH=/"), e.path
        d = device_from_properties(e.path)
        assert d is not None and d.action == "add", e.path
        if len(e.path) == e.size:  # all of it: every property, each ending in a NUL
            assert e.path.endswith("\n")
        assert e.size >= len(e.path)


def test_each_udev_load_names_its_device(text: str) -> None:
    """Judged like BPF events: every load a udev worker made names the device the worker
    broadcast next, with its subsystem."""
    conv = convert(text)
    rep = replay(conv.events, PROFILE_6_1)
    loads = [ld for ld, _ in rep.loads if is_worker(ld.comm)]
    assert len(loads) >= 10
    for ld in loads:
        assert ld.device is not None and ld.device.devpath.startswith("/devices/"), ld
        assert ld.device.subsystem, ld
    # the initramfs's insmods are nobody's device
    assert all(ld.device is None for ld, _ in rep.loads if ld.comm == "insmod")


def test_a_message_of_another_layout_is_no_device() -> None:
    words = ",".join(["0x0"] * early.UDEV_WORDS)
    ok = f"grp=2 hdr={{{early.UDEV_MAGIC:#x},{early.UDEV_HEADER | 16 << 32:#x}}} props={{{words}}}"
    line = ("   (udev-worker)-9 [000] ..... 5.000000: udev: (netlink_broadcast+0x0/0x4f0) ")
    for rest, n in ((ok, 1), (ok.replace("grp=2", "grp=1"), 0),
                    (ok.replace(f"{early.UDEV_MAGIC:#x}", "0x1"), 0),
                    (ok.replace(f"props={{{words}}}", "props=(fault)"), 0)):
        conv = early.Converter()
        conv.feed(line + rest)
        assert conv.unparsed == 0
        assert len(conv.events) == n, rest
    assert early.words("{0x1,0xffffffffffffffff}") == [1, (1 << 64) - 1]
    assert early.words("(fault)") == [] and early.words("{0x1,zz}") == []


def test_udev_devices_are_no_longer_missing_from_early_events() -> None:
    assert not any("udev" in k for k in early.NOT_EARLY)
