# ruff: noqa: E501  (the expected lines are the report's own, 100 columns each, quoted)
"""`report` and `boot show` take -p PID, -m MODULE and -x as `live` does (issue #24, 7).

A filter keeps the stories of that pid, of that module (a request string counts for the
modules its modprobe loaded: `fs-minix` for minix) or the duplicates and failures, and
the per-module rows those stories touch, each with its whole-trace figures; it says in one
line what it left out. Verdicts and losses are the whole trace's. The expectations are
the exact lines printed for the recorded 6.1 storm (tests/data/vm-6.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer.cli import main

TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"
HEADER = "TIME(s)    PID     COMM             WHAT  NAME               RET     LAT(ms)  DETAIL"
TABLE = ("MODULE  TRIES  OK  FAILED    WASTED  DEVICES  SPAN(s)  LOAD(s)  REQS  DUPS  REJ  "
         "ALIASES")


def _run(*args: str) -> list[str]:
    p = CliRunner().invoke(main, list(args))
    assert p.exit_code == 0, p.output
    return p.stdout.splitlines()


def _stories(lines: list[str]) -> list[str]:
    """The story lines: from the header to the first blank line."""
    return lines[: lines.index("")]


def _block(lines: list[str], first: str, n: int) -> list[str]:
    """N lines from the one starting with FIRST."""
    at = next(i for i, ln in enumerate(lines) if ln.startswith(first))
    return lines[at: at + n]


def _only(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("only ")]


MINIX_LOADS = [
    "13.209269  758     modprobe         FINIT minix              EEXIST    74.88  wasted=191.3KiB +",
    "13.211073  760     modprobe         FINIT minix              EEXIST    71.77  wasted=191.3KiB +",
    "13.212501  764     modprobe         FINIT minix              EEXIST    69.14  wasted=191.3KiB +",
    "13.236446  759     modprobe         FINIT minix              EEXIST    61.76  wasted=191.3KiB +",
    "13.276153  763     modprobe         FINIT minix              EEXIST    46.99  wasted=191.3KiB +",
    "13.279979  761     modprobe         FINIT minix              EEXIST    62.06  wasted=191.3KiB +",
]
MINIX_DUPS = [
    "12.139470  753     mount            REQ   fs-minix           0       1265.07  dup mp=759 loads=1",
    "12.141492  755     mount            REQ   fs-minix           0       1173.66  dup mp=760 loads=1",
    "12.146941  757     mount            REQ   fs-minix           0       1247.25  dup mp=761 loads=1",
    "12.149594  748     mount            REQ   fs-minix           0       1202.18  dup mp=762 loads=1",
    "12.155453  751     mount            REQ   fs-minix           0       1269.14  dup mp=763 loads=1",
    "12.162125  749     mount            REQ   fs-minix           0       1168.76  dup mp=764 loads=1",
    "12.201099  754     mount            REQ   fs-minix           0       1244.30  dup mp=765",
]
MINIX_TABLE = [
    "per module:",
    "7 load attempts for 1 modules; 1 modules tried more than once (6 extra attempts); 1.1MiB "
    "of vmalloc",
    "wasted",
    TABLE,
    "minix   7      1   EEXIST:6  1.1MiB  -        0.082    0.470    8     7     0    fs-minix",
    "",
]


def test_report_m_keeps_the_module_and_the_requests_that_led_to_it() -> None:
    lines = _run("report", "-m", "minix", str(TRACE))
    assert _stories(lines) == [
        HEADER,
        "12.136133  756     mount            REQ   fs-minix           0       1199.31  first mp=758 loads=1",
        *MINIX_DUPS,
        "13.198198  762     modprobe         FINIT minix              0         83.12  req=#99 init=1.91ms",
        *MINIX_LOADS,
    ]  # fmt: skip
    assert _only(lines) == ["only module minix: 8 of 89 requests, 7 of 63 loads, 1 of 12 modules"]
    assert _block(lines, "per module:", 6) == MINIX_TABLE
    # dashes are underscores, and the request string names its module too
    assert _run("report", "-m", "fs-minix", str(TRACE))[:2] == [HEADER, lines[1]]


def test_report_p_keeps_the_pid_s_stories_and_the_rows_they_touch() -> None:
    lines = _run("report", "-p", "784", str(TRACE))
    assert _stories(lines) == [
        HEADER,
        "15.954752  784     modprobe         FINIT crc32c_generic     EEXIST    27.71  wasted=19.5KiB",
        "15.997546  784     modprobe         FINIT libcrc32c          EEXIST    29.85  wasted=16.5KiB",
        "16.050912  784     modprobe         FINIT xfs                EEXIST  2714.56  wasted=8.0MiB",
    ]  # fmt: skip
    assert _only(lines) == ["only pid 784: 0 of 89 requests, 3 of 63 loads, 3 of 12 modules"]
    assert _block(lines, "per module:", 8) == [
        "per module:",
        "20 load attempts for 3 modules; 3 modules tried more than once (17 extra attempts); "
        "56.5MiB of",
        "vmalloc wasted",
        "MODULE          TRIES  OK  FAILED    WASTED    DEVICES  SPAN(s)  LOAD(s)  REQS  DUPS  "
        "REJ  ALIASES",
        "xfs             8      1   EEXIST:7  56.3MiB   -        0.045    22.044   0     0     0",
        "crc32c_generic  7      1   EEXIST:6  117.0KiB  -        0.054    0.221    0     0     0",
        "libcrc32c       5      1   EEXIST:4  65.8KiB   -        0.030    0.085    0     0     0",
        "",
    ]


def test_report_x_keeps_duplicates_failures_and_waste() -> None:
    lines = _run("report", "-x", "-m", "minix", str(TRACE))
    assert _stories(lines) == [HEADER, *MINIX_DUPS, *MINIX_LOADS]
    assert _only(lines) == ["only module minix, duplicates and failures: 7 of 89 requests, "
                            "6 of 63 loads, 1 of 12 modules"]
    assert _block(lines, "per module:", 6) == MINIX_TABLE
    every = _run("report", "-x", str(TRACE))
    stories = _stories(every)[1:]
    assert len(stories) == 75 + 50
    assert all((" REQ " in ln and (" dup " in ln or "exit1" in ln))
               or (" FINIT " in ln and "EEXIST" in ln) for ln in stories), stories
    assert _only(every) == ["only duplicates and failures: 75 of 89 requests, 50 of 63 loads, "
                            "11 of 12 modules"]
    table = _block(every, "MODULE ", 13)
    assert [ln.split()[0] for ln in table[1:12]] == [
        "xfs", "appletalk", "minix", "dummy", "ifb", "llc", "crc32c_generic", "libcrc32c",
        "psnap", "veth", "kmt-no-such-module"]  # fmt: skip
    assert table[12] == "(--wide adds ALIASES)"


def test_report_json_takes_the_same_filters() -> None:
    whole = json.loads("\n".join(_run("report", "--json", str(TRACE))))
    doc = json.loads("\n".join(_run("report", "--json", "-m", "minix", "-x", str(TRACE))))
    assert doc["filter"] == {"pid": None, "module": "minix", "failed_only": True,
                             "total_requests": 89, "total_loads": 63, "total_modules": 12}
    assert list(doc["by_module"]) == ["minix"] and doc["by_module"]["minix"] == \
        whole["by_module"]["minix"]
    assert set(doc["modules"]) == {"fs-minix", "minix"}
    assert (doc["loading"]["attempts"], doc["loading"]["wasted_bytes"]) == (
        7, whole["by_module"]["minix"]["wasted_bytes"])
    # the stories are the whole trace's, verdicts included: nothing is judged again
    by_id = {(s["type"], s["id"]): s for s in whole["requests"] + whole["loads"]}
    kept = doc["requests"] + doc["loads"]
    assert len(kept) == 13 and all(s == by_id[(s["type"], s["id"])] for s in kept)
    assert {s["verdict"] for s in doc["requests"]} == {"duplicate"}
    p = json.loads("\n".join(_run("report", "--json", "-p", "784", str(TRACE))))
    assert [ld["module"] for ld in p["loads"]] == ["crc32c_generic", "libcrc32c", "xfs"]
    assert p["requests"] == [] and p["filter"]["pid"] == 784
    assert (p["lost_events"], p["missed_probes"]) == (whole["lost_events"],
                                                      whole["missed_probes"])


@pytest.fixture
def boot_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tracer import boot

    monkeypatch.setattr(boot, "LOG_DIR", str(tmp_path))
    dst = tmp_path / "boot-7ae9891b571d.jsonl"
    dst.write_bytes(TRACE.read_bytes())
    os.utime(dst, (1000, 1000))
    return tmp_path


BOOT_HEAD = [
    "boot 7ae9891b  kernel 6.1.0-56-amd64  2 CPUs  profile 6.1",
    "traced from 153.75 s after boot to 173.79 s",
    "791 events, lost 0, missed 0",
]


@pytest.mark.usefixtures("boot_log")
def test_boot_show_takes_the_same_filters() -> None:
    lines = _run("boot", "show", "-m", "minix")
    assert lines[:3] == BOOT_HEAD
    assert _only(lines) == ["only module minix: 8 of 89 requests, 7 of 63 loads, 1 of 12 modules"]
    assert _block(lines, "7 load attempts", 7) == [
        "7 load attempts for 1 modules; 1 modules tried more than once (6 extra attempts); 1.1MiB "
        "of vmalloc",
        "wasted",
        "module loading in flight 0.14 s (0.7 % of the 20.04 s traced); 0.47 s in (f)init_module "
        "calls in all",
        "",
        TABLE,
        MINIX_TABLE[4],
        "dups.c announce form deferred (by release); MODULE_STATS figures modelled: what a "
        "kernel with",
    ]
    lines = _run("boot", "show", "-p", "784")
    assert _only(lines) == ["only pid 784: 0 of 89 requests, 3 of 63 loads, 3 of 12 modules"]
    assert [ln.split()[0] for ln in _block(lines, "MODULE ", 4)] == [
        "MODULE", "xfs", "crc32c_generic", "libcrc32c"]
    lines = _run("boot", "show", "-x")
    assert _only(lines) == ["only duplicates and failures: 75 of 89 requests, 50 of 63 loads, "
                            "11 of 12 modules"]
    assert "veth " in "\n".join(lines) and "kmodstorm " not in "\n".join(lines)
    doc = json.loads("\n".join(_run("boot", "show", "--json", "-p", "784")))
    assert doc["filter"]["pid"] == 784 and sorted(doc["by_module"]) == [
        "crc32c_generic", "libcrc32c", "xfs"]


@pytest.mark.usefixtures("boot_log")
def test_no_filter_says_nothing() -> None:
    assert not _only(_run("report", str(TRACE))) and not _only(_run("boot", "show"))
    assert json.loads("\n".join(_run("report", "--json", str(TRACE))))["filter"] is None


def test_live_and_report_match_a_request_by_the_modules_it_led_to() -> None:
    """live passes Filter.request what the request's modprobe loaded, as report does:
    `-m minix` keeps the fs-minix requests in both."""
    from tracer import reportdata

    r = reportdata.read(str(TRACE))
    flt = reportdata.Filter(None, "minix")
    req, v = next((q, v) for q, v in r.requests if q.display_name == "fs-minix")
    assert not flt.request(req, v) and flt.request(req, v, {"minix"})
