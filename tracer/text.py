"""Strings a traced process controls, kept exact and shown safely.

comm, module and request names, file paths and udev properties are bytes the process
chose. Capture decodes them with `surrogateescape` (PEP 383): valid UTF-8 becomes its
characters and every other byte 0xNN becomes the lone surrogate U+DCNN, so nothing is lost
and os.fsencode() gives the bytes back.

- Human output (every line kmodtrace prints, plot labels, the SVG) goes through shown():
  whatever is not printable is escaped as `ls -b` and systemd-escape show it (`\\x1b`,
  `\\n`, `\\xff` for a byte that is not UTF-8), so no escape sequence reaches a terminal.
- JSON (the trace file, `--json`, Perfetto) carries a lone surrogate as its JSON escape
  `\\udcNN`, which Python's json reads back exactly. orjson and msgspec refuse lone
  surrogates both ways, so dumps()/loads() fall back to the stdlib json for such a line.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def shown(s: str) -> str:
    """S as a human may see it: printable characters as they are, a backslash doubled (so
    an escape cannot be faked), anything else escaped (C0, DEL, C1, format characters such
    as bidi overrides, lone surrogates: a surrogateescape'd byte shows as `\\xNN`)."""
    if s.isprintable() and "\\" not in s:  # the common case: one C pass, no copy
        return s
    return "".join(_char(c) for c in s)


def _char(c: str) -> str:
    if c.isprintable() and c != "\\":
        return c
    esc = _C_ESCAPES.get(c)
    if esc is not None:
        return esc
    n = ord(c)
    if n < 0x80 or 0xDC80 <= n <= 0xDCFF:  # an ASCII control or a byte that is not UTF-8
        return f"\\x{n & 0xFF:02x}"
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def dumps(obj: Any) -> bytes:
    """One JSON line (with its newline); a lone surrogate as its \\udcNN escape."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # "str is not valid UTF-8: surrogates not allowed"
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def loads(line: str | bytes) -> Any:
    """A JSON value; ValueError if LINE is not JSON. A line orjson refuses is tried again
    with the stdlib json only if it may hold a surrogate escape, which only it reads."""
    try:
        return orjson.loads(line)
    except ValueError:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if "\\ud" not in text and "\\uD" not in text:
            raise
        try:
            return json.loads(text)
        except RecursionError as e:  # a hostile nesting the C parsers refuse by depth
            raise ValueError("JSON nested too deep") from e
