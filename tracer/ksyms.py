"""Kernel addresses to symbol+offset, from /proc/kallsyms.

bcc's resolver reads kallsyms once, so a module loaded later (kmodstorm, or any
module whose init calls request_module) resolves to the wrong symbol. This one
is marked stale on every module load and re-read lazily at the next lookup.
"""

from __future__ import annotations

import bisect


class KernelSymbols:
    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        self._addrs: list[int] = []
        self._names: list[str] = []
        self.stale = True

    def invalidate(self) -> None:
        self.stale = True

    def _load(self) -> None:
        syms: list[tuple[int, str]] = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        name = parts[2] + (f" {parts[3]}" if len(parts) > 3 else "")
                        syms.append((int(parts[0], 16), name))
        except OSError:
            pass
        syms.sort()
        self._addrs = [a for a, _ in syms]
        self._names = [n for _, n in syms]
        self.stale = False

    def resolve(self, addr: int) -> str:
        if self.stale:
            self._load()
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or not addr or self._addrs[i] == 0:  # hidden addresses (kptr_restrict)
            return hex(addr)
        name = self._names[i]
        module = ""
        if " " in name:
            name, module = name.split(" ", 1)
            module = " " + module
        return f"{name}+{addr - self._addrs[i]:#x}{module}"
