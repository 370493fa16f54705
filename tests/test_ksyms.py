"""Call-site names: modules from /proc/modules (re-read after a load), core from kallsyms."""

from __future__ import annotations

import errno
from pathlib import Path

from tracer.ksyms import KernelSymbols


def test_module_loaded_later_is_named(tmp_path: Path) -> None:
    kall, mods = tmp_path / "kallsyms", tmp_path / "modules"
    kall.write_text("ffffffff81000000 T _stext\nffffffff81000100 t request_thing\n"
                    "ffffffff81000200 D some_data\n")
    mods.write_text("veth 40960 0 - Live 0xffffffffc0000000\n")
    syms = KernelSymbols(str(kall), str(mods))
    assert syms.resolve(0xFFFFFFFF81000110) == "request_thing+0x10"
    assert syms.resolve(0xFFFFFFFF81000210) == "request_thing+0x110"  # data is skipped
    assert syms.module_of(0xFFFFFFFFC0001020) == "veth+0x1020 [module]"
    mods.write_text(mods.read_text() + "kmodstorm 16384 0 - Loading 0xffffffffc0100000 (OE)\n")
    assert syms.module_of(0xFFFFFFFFC0100020) is None  # not re-read until a load is seen
    syms.invalidate()
    assert syms.module_of(0xFFFFFFFFC0100020) == "kmodstorm+0x20 [module]"
    assert syms.resolve(0x10) == "0x10"


def test_hidden_addresses_stay_raw(tmp_path: Path) -> None:
    kall, mods = tmp_path / "kallsyms", tmp_path / "modules"
    kall.write_text("0000000000000000 T _stext\n0000000000000000 t foo\n")
    mods.write_text("veth 40960 0 - Live 0x0000000000000000\n")
    syms = KernelSymbols(str(kall), str(mods))
    assert syms.resolve(0xFFFFFFFF81000110) == "0xffffffff81000110"


def test_address_of_a_call_site_as_tracefs_prints_it(tmp_path: Path) -> None:
    """The early trace's module_request lines name their call site (%ps): back to the
    address, so the report names it the way it names BPF's."""
    kall, mods = tmp_path / "kallsyms", tmp_path / "modules"
    kall.write_text("ffffffff81000000 T _stext\nffffffff81000100 t get_fs_type\n"
                    "ffffffff81000200 D some_data\n")
    mods.write_text("")
    syms = KernelSymbols(str(kall), str(mods))
    assert syms.address_of("get_fs_type") == 0xFFFFFFFF81000100
    assert syms.address_of("get_fs_type+0x6f") == 0xFFFFFFFF81000100
    assert syms.address_of("some_data") == 0 and syms.address_of("absent") == 0
    assert syms.core(syms.address_of("get_fs_type") + 0x6f) == "get_fs_type+0x6f"


def test_kallsyms_lookup_agrees_with_a_line_by_line_parse() -> None:
    """The one-pass regex lookup on this machine's /proc/kallsyms: code and data symbols,
    a name that is a prefix of others, and one that is absent."""
    from tracer import kernel

    with open("/proc/kallsyms") as f:
        lines = [ln.split() for ln in f]
    core = [p for p in lines if len(p) == 3]
    wanted = {p[2] for p in core[:: max(1, len(core) // 40)]} | {"schedule", "kmt_absent"}
    expect: dict[str, tuple[str, int]] = {}
    for addr, typ, name in core:
        if name in wanted:
            expect.setdefault(name, (typ, int(addr, 16)))
    got = kernel.kallsyms_lookup(wanted)
    assert got == expect and "kmt_absent" not in got


def test_throttle_form_from_kallsyms_entries() -> None:
    """kmod_wq present: 6.1's wait queue (no fexit: tracer/bpf req_site sees those
    returns); absent: the semaphore, at down_timeout; no kmod_concurrent_max address
    (hidden data symbols): neither."""
    from tracer import kernel
    from tracer.probes import RESCUE_HOOK, Tracer

    wq = {"kmod_concurrent_max": ("d", 0x10), "kmod_wq": ("d", 0x20),
          "down_timeout": ("T", 0x40), "bpf_trampoline_link_prog": ("T", 0x50)}
    assert kernel.throttle_form(wq) == ("waitqueue", 0x10)
    assert Tracer._throttle_rescue(wq) == (None, [])
    sem = {k: v for k, v in wq.items() if k != "kmod_wq"}
    assert kernel.throttle_form(sem) == ("semaphore", 0x10)
    assert Tracer._throttle_rescue(sem) == (RESCUE_HOOK, ["-DKMOD_SEM=0x10ULL",
                                                          f"-DKMOD_ETIME={errno.ETIME}"])
    assert kernel.throttle_form({k: v for k, v in sem.items() if k != "down_timeout"}) is None
    assert kernel.throttle_form(sem | {"kmod_concurrent_max": ("d", 0)}) is None


def test_module_range_is_where_its_code_was_loaded(tmp_path: Path) -> None:
    """watch_module's range: a module still loading (its init to run) counts."""
    kall, mods = tmp_path / "kallsyms", tmp_path / "modules"
    kall.write_text("ffffffff81000000 T _stext\n")
    mods.write_text("veth 40960 0 - Live 0xffffffffc0000000\n"
                    "kmodstorm_fail 16384 0 - Live 0xffffffffc0200000 (OE)\n"
                    "kmodstorm 16384 0 - Loading 0xffffffffc0100000 (OE)\n"
                    "hidden 16384 0 - Live 0x0000000000000000\n")
    syms = KernelSymbols(str(kall), str(mods))
    assert syms.module_range("kmodstorm") == (0xFFFFFFFFC0100000, 16384)
    assert syms.module_range("veth") == (0xFFFFFFFFC0000000, 40960)
    assert syms.module_range("hidden") is None
    assert syms.module_range("xfs") is None
