"""The one list of programs kmodtrace and its lab call (programs.tsv, package data).

Each row names a program (or "-" for a package needed for its files), the Debian
package that provides it (or pip:NAME for one pyproject.toml installs), who uses it and
why. vm/bootstrap.sh installs every Debian package on it; the lab takes the packages it
installs at run time from here (the oracle kernel's build, the stable kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

LIST = resources.files("kmodlab") / "programs.tsv"
USES = ("tracer", "bootstrap", "vm", "guest", "kernel", "oracle")


@dataclass(frozen=True, slots=True)
class Program:
    name: str  # a command on PATH, an absolute path, or "-"
    package: str  # a Debian package, or pip:NAME
    uses: tuple[str, ...]
    why: str

    @property
    def debian(self) -> bool:
        return not self.package.startswith("pip:")


def parse(text: str) -> list[Program]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 4 or not all(c.strip() for c in cols):
            raise ValueError(f"programs.tsv:{n}: expected 4 tab-separated columns: {line!r}")
        uses = tuple(cols[2].split(","))
        if unknown := set(uses) - set(USES):
            raise ValueError(f"programs.tsv:{n}: unknown use {sorted(unknown)}")
        rows.append(Program(cols[0], cols[1], uses, cols[3]))
    return rows


def load() -> list[Program]:
    return parse(LIST.read_text())


def packages(use: str | None = None) -> list[str]:
    """The Debian packages on the list (those of USE only, if given), in list order."""
    if use is not None and use not in USES:
        raise ValueError(f"unknown use {use!r}")
    out: list[str] = []
    for p in load():
        if p.debian and (use is None or use in p.uses) and p.package not in out:
            out.append(p.package)
    return out
