"""The JSON Schema of `report --json`, `boot show --json`, `boot diff --json` and
`live --json`'s lines (tracer/report.schema.json, package data), and the README section
made from it.

The schema is the one place a key of these documents is declared: a key is added there
(with `schema_version` raised) before the report writes it; tests/test_schema.py checks
that every document the tests produce validates, and that the README's section is what
`python -m tracer.schema --readme README.md` writes. The tracer itself never validates
(jsonschema is a test dependency).
"""

from __future__ import annotations

import json
import sys
import textwrap
from importlib import resources
from typing import Any

SCHEMA_FILE = "report.schema.json"
# The README's generated section lies between these two lines.
BEGIN = ("<!-- generated from tracer/report.schema.json by "
         "`python -m tracer.schema --readme README.md`: edit the schema, not this -->")
END = "<!-- end of the generated schema -->"
WIDTH = 92

# What each part is called in the README, in the order it is described.
_PARTS = (
    ("", "The document"),
    ("request", "`requests[]` (each also a `live --json` line)"),
    ("load", "`loads[]` (each also a `live --json` line)"),
    ("model_row", "`modules{name}`"),
    ("module_row", "`by_module{module}`"),
    ("unnamed", "`unnamed`"),
    ("loading", "`loading`"),
    ("filter", "`filter`"),
    ("early", "`early`"),
    ("boot_diff", "`boot diff --json`"),
    ("headline", "`boot diff --json`'s `a` and `b`"),
)


def load() -> dict[str, Any]:
    """The schema, as the package ships it."""
    text = resources.files("tracer").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    out: dict[str, Any] = json.loads(text)
    return out


def version(schema: dict[str, Any] | None = None) -> int:
    """The schema's version: what `schema_version` of a document says."""
    v: int = (schema or load())["properties"]["schema_version"]["const"]
    return v


def _type(prop: dict[str, Any]) -> str:
    """A property's type in words: "integer or null", "`request`", "2"."""
    if "const" in prop:
        return json.dumps(prop["const"])
    if "$ref" in prop:
        ref = prop["$ref"]
        if "/properties/" in ref:  # the same as another part's key
            part, key = ref.split("/")[-3], ref.split("/")[-1]
            return f"as `{part}`'s `{key}`" if part != "#" else f"as `{key}` above"
        return f"`{ref.rsplit('/', 1)[-1]}`"
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join("null" if e is None else f"`{e}`" for e in prop["enum"])
    kinds = prop.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for k in kinds:
        if k == "array" and "items" in prop:
            words.append(f"array of {_type(prop['items'])}")
        elif k == "object" and isinstance(prop.get("additionalProperties"), dict):
            words.append(f"object of {_type(prop['additionalProperties'])}")
        else:
            words.append(k)
    return " or ".join(words)


def _keys(node: dict[str, Any], indent: str) -> list[str]:
    """One bullet per key of NODE, the keys of an object it holds indented below."""
    out = []
    for key, prop in node["properties"].items():
        desc = prop.get("description", "")
        line = f"{indent}- `{key}` ({_type(prop)})" + (f": {desc}" if desc else "")
        out += textwrap.wrap(line, WIDTH, subsequent_indent=indent + "  ")
        inner = prop.get("additionalProperties")
        for sub in (prop, inner if isinstance(inner, dict) else {}):
            if "properties" in sub:
                out += _keys(sub, indent + "  ")
        for alt in prop.get("anyOf", ()):  # a nullable object spelled out in place
            if "properties" in alt:
                out += [f"{indent}  - the keys of `by_module{{module}}`, and:"] \
                    if set(alt["properties"]) > set(_ROW) else []
                out += _keys({"properties": {k: v for k, v in alt["properties"].items()
                                             if k not in _ROW}}, indent + "  ")
    return out


# set by markdown(): the by_module row's keys, which a boot diff side repeats
_ROW: dict[str, Any] = {}


def markdown(schema: dict[str, Any] | None = None) -> str:
    """The README's schema section, from the schema."""
    schema = schema or load()
    defs = schema["$defs"]
    _ROW.clear()
    _ROW.update(defs["module_row"]["properties"])
    out = [BEGIN, ""]
    out += textwrap.wrap(schema["description"], WIDTH)
    titles = dict(_PARTS)  # the parts named there first, in that order, then the others
    for name in [*titles, *(n for n in defs if n not in titles)]:
        node = defs[name] if name else schema
        title = titles.get(name, f"`{name}`")
        intro = f"{title}: {node.get('description', '')}" if name else f"{title}:"
        out += ["", *textwrap.wrap(intro, WIDTH)]
        out += _keys(node, "") if "properties" in node else []
    return "\n".join([*out, "", END])


def replace_section(readme: str, section: str) -> str:
    """README text with its generated section replaced by SECTION."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + section + readme[end:]


def main(argv: list[str]) -> int:
    """Print the README section; with --readme PATH, write it into that README."""
    section = markdown()
    if argv[:1] == ["--readme"] and len(argv) == 2:
        with open(argv[1], encoding="utf-8") as f:
            text = f.read()
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(replace_section(text, section))
        return 0
    if argv:
        print("usage: python -m tracer.schema [--readme README.md]", file=sys.stderr)
        return 2
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
