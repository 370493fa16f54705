"""Call-site resolution from a kallsyms file, including symbols of a module loaded later."""

from __future__ import annotations

from pathlib import Path

from tracer.ksyms import KernelSymbols


def test_resolve_and_reload_after_a_module_load(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _stext\nffffffff81000100 t request_thing\n"
                 "ffffffff81000200 D some_data\n")
    syms = KernelSymbols(str(f))
    assert syms.resolve(0xFFFFFFFF81000110) == "request_thing+0x10"
    assert syms.resolve(0xFFFFFFFF81000210) == "request_thing+0x110"  # data is skipped
    # a module appears; until invalidated the old table answers (wrongly)
    f.write_text(f.read_text() + "ffffffffc0001000 t storm_thread\t[kmodstorm]\n")
    assert syms.resolve(0xFFFFFFFFC0001020).startswith("request_thing+")
    syms.invalidate()
    assert syms.resolve(0xFFFFFFFFC0001020) == "storm_thread+0x20 [kmodstorm]"
    assert syms.resolve(0x10) == "0x10"


def test_hidden_addresses_stay_raw(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("0000000000000000 T _stext\n0000000000000000 t foo\n")
    assert KernelSymbols(str(f)).resolve(0xFFFFFFFF81000110) == "0xffffffff81000110"
