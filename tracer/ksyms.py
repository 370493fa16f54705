"""Kernel addresses to names, cheaply enough for the consumer's hot path.

Module addresses are named from /proc/modules (a few lines, re-read after each
module load: bcc's kallsyms cache, read once, names a module loaded later after
whatever symbol precedes it). Core kernel addresses never move, so their symbols
are looked up from /proc/kallsyms once, when the trace ends: reading 100 000+
symbols mid-storm would stall the consumer for seconds under emulation.
"""

from __future__ import annotations

import bisect


class KernelSymbols:
    def __init__(self, kallsyms: str = "/proc/kallsyms", modules: str = "/proc/modules"):
        self.kallsyms_path = kallsyms
        self.modules_path = modules
        self._mods: list[tuple[int, int, str]] = []  # (base, size, name)
        self._mods_stale = True
        self._addrs: list[int] | None = None  # core symbols, loaded on first need
        self._names: list[str] = []
        self._by_name: dict[str, int] | None = None  # address_of's index, on first need

    def invalidate(self) -> None:
        """A module was loaded: its range is new."""
        self._mods_stale = True

    def _modules(self) -> list[tuple[int, int, str]]:
        if self._mods_stale:
            self._mods = []
            try:
                with open(self.modules_path) as f:
                    for line in f:
                        p = line.split()
                        if len(p) >= 6 and p[5].startswith("0x") and int(p[5], 16):
                            self._mods.append((int(p[5], 16), int(p[1]), p[0]))
            except OSError:
                pass
            self._mods_stale = False
        return self._mods

    def module_of(self, addr: int) -> str | None:
        """'name+0xoff [module]' for an address inside a loaded module, else None."""
        for base, size, name in self._modules():
            if base <= addr < base + size:
                return f"{name}+{addr - base:#x} [module]"
        return None

    def module_range(self, name: str) -> tuple[int, int] | None:
        """(base, size) of a loaded module's memory as /proc/modules gives it (its code
        first), None if it is not loaded or kallsyms hides addresses."""
        for base, size, mod in self._modules():
            if mod == name:
                return base, size
        return None

    def _load_core(self) -> None:
        syms: list[tuple[int, str]] = []
        try:
            with open(self.kallsyms_path) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 3 and p[1] in "tTwW":
                        syms.append((int(p[0], 16), p[2]))
        except OSError:
            pass
        syms.sort()
        self._addrs = [a for a, _ in syms]
        self._names = [n for _, n in syms]

    def core(self, addr: int) -> str:
        """'symbol+0xoff' for a core kernel address (hex if kallsyms hides addresses)."""
        if self._addrs is None:
            self._load_core()
        assert self._addrs is not None
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or not addr or self._addrs[i] == 0:
            return hex(addr)
        return f"{self._names[i]}+{addr - self._addrs[i]:#x}"

    def address_of(self, name: str) -> int:
        """A core function's address ("name" or "name+0x10" as tracefs prints call
        sites), 0 if kallsyms hides it or has no such function."""
        if self._addrs is None:
            self._load_core()
        if self._by_name is None:
            self._by_name = {}
            for a, n in zip(self._addrs or [], self._names, strict=True):
                self._by_name.setdefault(n, a)
        return self._by_name.get(name.split("+")[0], 0)

    def resolve(self, addr: int) -> str:
        return self.module_of(addr) or self.core(addr)
