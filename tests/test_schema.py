"""tracer/report.schema.json: the one declaration of every key `report --json`, `boot show
--json`, `boot diff --json` and `live --json` write, checked against what they write and
against the README's section, which is made from it.

Every document a test makes in-process is validated as it is made (conftest.py); these
tests add the recorded traces, and the keys issue #24 found undeclared or misnamed:
rejected requests' verdict, one meaning per count, no module named "".
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from tests.schema_check import check_diff, check_report, check_story
from tracer import bootdiff, bymodule, report, reportdata, schema
from tracer.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
TRACES = {n: DATA / n / "trace.jsonl" for n in ("vm-6.1", "vm-6.12", "vm-6.1-udev")}


@pytest.fixture(scope="module")
def oracle_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle's recording: 9 000 requests, and two init_module() calls with a bad
    buffer (EFAULT), which the kernel cannot name."""
    path = tmp_path_factory.mktemp("oracle") / "trace.jsonl"
    path.write_bytes(zstandard.ZstdDecompressor().decompress(
        (DATA / "oracle-6.12" / "trace.jsonl.zst").read_bytes(), max_output_size=1 << 30))
    return path


def _cli(*args: str) -> str:
    p = CliRunner().invoke(main, list(args))
    assert p.exit_code == 0, p.output
    return p.stdout


def test_the_schema_is_a_2020_12_schema_with_the_report_s_version() -> None:
    s = schema.load()
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema.version(s) == report.SCHEMA_VERSION == 2
    # every part closed: a key the report writes that the schema does not declare fails
    parts = [s, *(d for d in s["$defs"].values() if d.get("type") == "object")]
    assert all(p.get("additionalProperties") is False and set(p["required"]) ==
               set(p["properties"]) for p in parts if "properties" in p)


def test_the_readme_section_is_made_from_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(schema.BEGIN), readme.index(schema.END) + len(schema.END)
    assert readme[start:end] == schema.markdown(), (
        "README.md's schema section is stale: run `python -m tracer.schema --readme README.md`")
    assert f"### `report --json` schema (version {report.SCHEMA_VERSION})" in readme


def test_the_wheel_carries_the_schema() -> None:
    """tests/test_wheel.py checks the built wheel; here the declaration that puts it there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "report.schema.json" in project["tool"]["setuptools"]["package-data"]["tracer"]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_every_recorded_trace_gives_a_valid_document(name: str) -> None:
    doc = check_report(json.loads(_cli("report", "--json", str(TRACES[name]))))
    assert doc["schema_version"] == 2 and doc["filter"] is None
    assert check_report(json.loads(_cli("report", "--json", "-x", str(TRACES[name]))))["filter"]
    for story in doc["requests"] + doc["loads"]:
        check_story(story)


def test_boot_diff_validates_with_the_same_rows() -> None:
    doc = check_diff(json.loads(_cli("boot", "diff", "--json", str(TRACES["vm-6.1"]),
                                     str(TRACES["vm-6.12"]))))
    assert doc["schema_version"] == report.SCHEMA_VERSION
    row = doc["modules"]["dummy"]["a"]
    assert set(row) == set(schema.load()["$defs"]["module_row"]["properties"]) | {
        "dup_attempts"}


def _rejected_trace(tmp_path: Path) -> Path:
    """The 6.1 storm with module:module_request gone from the 5 kmt-no-such-module
    requests: each returns without dups.c having seen it, as an LSM refusal does."""
    lines = TRACES["vm-6.1"].read_text().splitlines()
    kept = [ln for ln in lines if not (json.loads(ln).get("kind") == 3
                                       and json.loads(ln).get("name") == "kmt-no-such-module")]
    assert len(lines) - len(kept) == 5
    path = tmp_path / "rejected.jsonl"
    path.write_text("\n".join(kept) + "\n")
    return path


def test_rejected_requests_have_the_verdict_rejected_and_one_count(tmp_path: Path) -> None:
    """verdict `rejected` for each; `requests` means the same in modules{} and
    by_module{} (reached module:module_request), `rejected` counts the others in both."""
    doc = check_report(json.loads(_cli("report", "--json", str(_rejected_trace(tmp_path)))))
    rejected = [r for r in doc["requests"] if r["rejected"]]
    assert len(rejected) == 5
    assert {r["verdict"] for r in rejected} == {"rejected"}
    assert all(r["verdict"] != "rejected" for r in doc["requests"] if not r["rejected"])
    m, row = doc["modules"]["kmt-no-such-module"], doc["by_module"]["kmt-no-such-module"]
    assert (m["requests"], m["rejected"]) == (row["requests"], row["rejected"]) == (0, 5)
    seen = [r for r in doc["requests"] if not r["rejected"]]
    assert sum(m["requests"] for m in doc["modules"].values()) == len(seen)
    assert sum(m["rejected"] for m in doc["modules"].values()) == 5
    # the wide tables: REQS and REJ in both, one meaning each
    text = _cli("report", "--wide", str(_rejected_trace(tmp_path))).splitlines()
    heads = [ln.split() for ln in text if ln.startswith("MODULE ")]
    assert len(heads) == 2 and all("REQS" in h and "REJ" in h for h in heads)
    rows = [ln.split() for ln in text if ln.startswith("kmt-no-such-module ")]
    for head, cells in zip(heads, rows, strict=True):
        assert (cells[head.index("REQS")], cells[head.index("REJ")]) == ("0", "5")


def test_the_same_counts_in_every_recorded_trace() -> None:
    """by_module{}.requests and modules{}.requests count the same requests: each
    request string's non-rejected requests, joined to modules."""
    for path in TRACES.values():
        r = reportdata.read(str(path))
        seen = sum(1 for q, v in r.requests if v is not None and v.verdict != "rejected")
        assert sum(m.requests for m in r.modules.values()) == seen
        assert sum(row.requests for row in bymodule.join(
            r.requests, r.loads).values()) >= seen  # a string can lead to several modules


def test_no_module_is_named_empty(oracle_trace: Path) -> None:
    """The two EFAULT init_module() calls: module null in loads[], their row and the
    model's under `unnamed`, their 128 KiB counted in `loading`; "(unnamed)" in text."""
    doc = json.loads(_cli("report", "--json", str(oracle_trace)))  # checked as it was made
    assert "" not in doc["modules"] and "" not in doc["by_module"]
    unnamed = [ld for ld in doc["loads"] if ld["module"] is None]
    assert [(ld["syscall"], ld["verdict"], ld["wasted_bytes"]) for ld in unnamed] == [
        ("init_module", "EFAULT", 65536)] * 2
    assert doc["unnamed"]["loads"]["module"] is None
    assert (doc["unnamed"]["loads"]["attempts"], doc["unnamed"]["loads"]["failures"],
            doc["unnamed"]["loads"]["wasted_bytes"]) == (2, {"EFAULT": 2}, 131072)
    assert doc["unnamed"]["model"]["load_failures"] == {"EFAULT": 2}
    assert doc["loading"]["wasted_bytes"] == sum(ld["wasted_bytes"] or 0
                                                 for ld in doc["loads"])
    assert doc["loading"]["attempts"] == sum(1 for ld in doc["loads"] if ld["ret"] is not None)
    text = _cli("report", str(oracle_trace)).splitlines()
    assert sum(1 for ln in text if " INIT  (unnamed) " in ln) == 2
    assert [ln.split()[:4] for ln in text if ln.startswith("(unnamed) ")] == [
        ["(unnamed)", "2", "0", "EFAULT:2"]]


def _with_early(tmp_path: Path, record: dict[str, Any]) -> Path:
    lines = TRACES["vm-6.1"].read_text().splitlines()
    path = tmp_path / "early.jsonl"
    path.write_text("\n".join([lines[0], json.dumps({"type": "early", **record}),
                               *lines[1:]]) + "\n")
    return path


def test_the_early_record_keeps_its_declared_keys(tmp_path: Path) -> None:
    """`early` holds the keys the schema declares, each null where the record lacks it or
    holds another type; a key the record adds is left out."""
    record = {"attach_begin_ns": 5, "attach_end_ns": "soon", "configured": True,
              "probes": ["kmodtrace/req", 7], "gap": "none", "stowaway": 1}
    doc = check_report(json.loads(_cli("report", "--json", str(_with_early(tmp_path,
                                                                          record)))))
    early = doc["early"]
    assert set(early) == set(schema.load()["$defs"]["early"]["properties"])
    assert (early["attach_begin_ns"], early["attach_end_ns"], early["configured"],
            early["probes"], early["gap"], early["clock"]) == (
        5, None, True, ["kmodtrace/req"], "none", None)
    assert early["events_in_trace"] == 0


def test_a_document_with_an_undeclared_key_fails() -> None:
    doc = report.document(reportdata.read(str(TRACES["vm-6.1"])))
    with pytest.raises(AssertionError, match="'surprise' was unexpected"):
        check_report(doc | {"surprise": 1})
    with pytest.raises(AssertionError, match="by_module"):
        check_report(doc | {"by_module": {"": doc["by_module"]["dummy"]}})
    d = bootdiff.diff(bootdiff.load_boot(TRACES["vm-6.1"]), bootdiff.load_boot(TRACES["vm-6.12"]))
    bad = bootdiff.document(d)
    bad["modules"]["dummy"]["a"] = bad["modules"]["dummy"]["a"] | {"extra": 0}
    with pytest.raises(AssertionError, match="modules/dummy/a: "):
        check_diff(bad)
