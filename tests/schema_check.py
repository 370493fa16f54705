"""Validation of the JSON documents the tests produce against tracer/report.schema.json.

conftest.py wraps report.document, bootdiff.document and the story fields of `live
--json` with these checks for every test, and tests that read a document a subprocess
printed call them themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tracer import schema


@cache
def _validator(part: str | None) -> Draft202012Validator:
    root = schema.load()
    if part is None:
        return Draft202012Validator(root)
    registry: Registry[Any] = Registry().with_resource(root["$id"],
                                                       Resource.from_contents(root))
    return Draft202012Validator({"$ref": f"{root['$id']}#/$defs/{part}"}, registry=registry)


def check(doc: Any, part: str | None = None) -> Any:
    """DOC, after asserting it is a valid document (PART: one of the schema's $defs)."""
    errors = sorted(_validator(part).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message[:300]}"
        for e in errors[:10])
    return doc


def check_report(doc: Any) -> Any:
    """`report --json`, `boot show --json`."""
    return check(doc)


def check_diff(doc: Any) -> Any:
    """`boot diff --json`."""
    return check(doc, "boot_diff")


def check_story(doc: Any) -> Any:
    """One `live --json` line."""
    return check(doc, doc.get("type") if isinstance(doc, dict) else None)


def _checked(fn: Callable[..., Any], checker: Callable[[Any], Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return checker(fn(*args, **kwargs))

    return wrapper


def hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every document made in this process during a test is checked as it is made."""
    from tracer import bootdiff, report

    monkeypatch.setattr(report, "document", _checked(report.document, check_report))
    monkeypatch.setattr(bootdiff, "document", _checked(bootdiff.document, check_diff))
    # live --json writes request_json/load_json | proc_json: the story without its
    # proc keys is checked where it is made (the first STORIES of a test: a document's
    # are checked with it), the whole line by check_story
    left = [STORIES]

    def partial_story(doc: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            check_story(doc | {"cmdline": doc.get("cmdline", ""),
                               "parents": doc.get("parents", [])})
        return doc

    for name in ("request_json", "load_json"):
        monkeypatch.setattr(report, name, _checked(getattr(report, name), partial_story))


STORIES = 500
