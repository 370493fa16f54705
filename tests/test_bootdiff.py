"""`boot diff`: two recorded traces per module, and statuses that follow from the rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.schema_check import check_diff
from tracer import bootdiff, bymodule, report
from tracer.bootdiff import Threshold
from tracer.bymodule import ModuleRow
from tracer.cli import main
from tracer.record import TraceWriter, read_trace
from tracer.session import replay
from tracer.stories import Load

DATA = Path(__file__).parent / "data"
T61, T612, UDEV = (str(DATA / n / "trace.jsonl") for n in ("vm-6.1", "vm-6.12", "vm-6.1-udev"))
MS = 1_000_000


def _rows(path: str) -> dict[str, ModuleRow]:
    """The rows of a trace, built here the way `report` builds them, not through bootdiff."""
    trace = read_trace(path)
    rep = replay(trace.events, trace.features.profile, modaliases=trace.modaliases)
    return bymodule.join(rep.requests, rep.loads)


def _grew(a: int, b: int, pct: float = 25, ms: float = 50) -> bool:
    return b - a >= ms * MS and b - a > 0 and (b - a) * 100 >= pct * a


def _expected(a: ModuleRow, b: ModuleRow, pct: float = 25) -> str:
    """The status rule of the issue, written out independently of tracer.bootdiff."""
    def costs(r: ModuleRow) -> list[int]:
        dups = r.duplicates + r.converged + r.failures["EEXIST"] + r.failures["EBUSY"]
        return [r.attempts, dups, sum(r.failures.values()), r.wasted_bytes]

    if _grew(a.load_ns, b.load_ns, pct) or _grew(a.span_ns, b.span_ns, pct):
        return "slower"
    if any(y > x for x, y in zip(costs(a), costs(b), strict=True)):
        return "more"
    if _grew(b.load_ns, a.load_ns, pct) or _grew(b.span_ns, a.span_ns, pct):
        return "faster"
    if any(y < x for x, y in zip(costs(a), costs(b), strict=True)):
        return "fewer"
    return "same"


@pytest.mark.parametrize("pct", [25.0, 1e6])  # 1e6 %: no time change counts
def test_diff_6_1_against_6_12_uses_the_rows_numbers(pct: float) -> None:
    rows_a, rows_b = _rows(T61), _rows(T612)
    d = bootdiff.diff(bootdiff.load_boot(T61), bootdiff.load_boot(T612), Threshold(pct))
    doc = json.loads(json.dumps(bootdiff.document(d)))
    assert set(doc["modules"]) == rows_a.keys() | rows_b.keys()
    for name, m in doc["modules"].items():
        ra, rb = rows_a[name], rows_b[name]  # the same storms: every module in both
        for side, row in (("a", ra), ("b", rb)):
            assert m[side] == json.loads(json.dumps(row.to_json())) | {
                "dup_attempts": row.converged + row.failures["EEXIST"] + row.failures["EBUSY"]}
        assert m["status"] == _expected(ra, rb, pct), name
    assert doc["modules"]["dummy"]["a"]["attempts"] == 10
    assert doc["modules"]["dummy"]["b"]["attempts"] == 23
    assert doc["modules"]["kmt-no-such-module"]["status"] == "same"  # 5 failed requests each
    if pct == 25.0:
        assert doc["modules"]["dummy"]["status"] == "slower"  # 2.1 s -> 15.5 s in finit
    else:
        assert doc["modules"]["dummy"]["status"] == "more"
        assert doc["modules"]["xfs"]["status"] == "fewer"  # same tries, less vmalloc wasted
        assert doc["modules"]["xfs"]["changes"] == ["fewer"]


def test_modules_of_only_one_trace_are_new_or_gone() -> None:
    rows_a, rows_b = _rows(T61), _rows(UDEV)
    d = bootdiff.diff(bootdiff.load_boot(T61), bootdiff.load_boot(UDEV))
    assert not rows_a.keys() & rows_b.keys()  # storms vs a udev coldplug
    by_name = {m.module: m for m in d.modules}
    assert {n for n, m in by_name.items() if m.status == "gone"} == rows_a.keys()
    assert {n for n, m in by_name.items() if m.status == "new"} == rows_b.keys()
    assert all(m.b is None for m in d.modules if m.status == "gone")
    assert by_name["acpi_cpufreq"].b is not None
    assert dict(by_name["acpi_cpufreq"].b.failures) == dict(rows_b["acpi_cpufreq"].failures)
    assert bootdiff.duplicates(rows_b["acpi_cpufreq"]) == rows_b["acpi_cpufreq"].failures["EBUSY"]
    # new first, then gone; each by the most wasted first
    statuses = [m.status for m in d.modules]
    assert statuses == sorted(statuses, key=bootdiff.STATUSES.index)
    gone = [m.a.wasted_bytes for m in d.modules if m.a is not None and m.status == "gone"]
    assert gone == sorted(gone, reverse=True) and d.modules[len(rows_b)].module == "xfs"


@pytest.mark.parametrize("path", [T61, T612, UDEV])
def test_a_trace_against_itself_is_all_same(path: str) -> None:
    boot = bootdiff.load_boot(path)
    d = bootdiff.diff(boot, bootdiff.load_boot(path))
    assert {m.status for m in d.modules} == {"same"}
    assert d.counts()["same"] == len(boot.rows) > 0


def _row(load_ms: float = 0, span_ms: float = 0, attempts: int = 1, wasted: int = 0,
         **failures: int) -> ModuleRow:
    row = ModuleRow("m", attempts=attempts, ok=1, wasted_bytes=wasted, first_ns=0,
                    last_ns=int(span_ms * MS), load_ns=int(load_ms * MS))
    row.failures.update(failures)
    return row


def test_slower_needs_both_the_share_and_the_milliseconds() -> None:
    def status(a: ModuleRow, b: ModuleRow, th: Threshold | None = None) -> str:
        return bootdiff.changes(a, b, th or Threshold())[0]

    assert status(_row(100), _row(149)) == "same"  # +49 %, but 49 ms
    assert status(_row(200), _row(250)) == "slower"  # +25 % and +50 ms
    assert status(_row(1000), _row(1240)) == "same"  # +240 ms, but 24 %
    assert status(_row(0), _row(50)) == "slower"  # from nothing: any 50 ms
    assert status(_row(span_ms=400), _row(span_ms=100)) == "faster"
    assert status(_row(200), _row(250), Threshold(pct=30)) == "same"
    assert status(_row(200), _row(250), Threshold(ms=60)) == "same"
    assert status(_row(), _row(attempts=2, EEXIST=1)) == "more"
    assert bootdiff.changes(_row(200, wasted=9), _row(400, wasted=1)) == ("slower", "fewer")
    assert status(_row(400, wasted=1), _row(200, wasted=9)) == "more"  # waste before speed
    assert bootdiff.changes(None, _row()) == ("new",)
    assert bootdiff.changes(_row(), None) == ("gone",)


def _copy_without(src: str, dst: Path, drop: Callable[[Load], bool]) -> None:
    """Write SRC again through TraceWriter, less every event of the loads DROP picks."""
    trace = read_trace(src)
    rep = replay(trace.events, trace.features.profile, modaliases=trace.modaliases)
    gone = [(ld.tid, ld.start_ns, ld.end_ns or ld.start_ns) for ld, _ in rep.loads if drop(ld)]
    assert gone
    w = TraceWriter(str(dst))
    w.write(trace.header)
    for devpath, modalias in trace.modaliases.items():
        w.device(devpath, modalias)
    for (pid, comm), (cmdline, parents) in trace.procs.items():
        w.proc(pid, comm, cmdline, parents)
    for ev in trace.events:
        if not any(ev.tid == tid and start <= ev.ts_ns <= end for tid, start, end in gone):
            w.event(ev)
    w.close({k: v for k, v in (trace.trailer or {}).items() if k != "type"})


def test_a_module_whose_loads_were_removed_is_gone(tmp_path: Path) -> None:
    copy = tmp_path / "no-xfs.jsonl"
    _copy_without(T61, copy, lambda ld: ld.module == "xfs")
    d = bootdiff.diff(bootdiff.load_boot(T61), bootdiff.load_boot(copy))
    by_name = {m.module: m for m in d.modules}
    assert by_name["xfs"].status == "gone" and by_name["xfs"].b is None
    assert d.modules[0].module == "xfs"  # the change first
    assert {m.status for m in d.modules if m.module != "xfs"} == {"same"}
    doc = bootdiff.document(d)
    assert doc["a"]["wasted_bytes"] - doc["b"]["wasted_bytes"] == _rows(T61)["xfs"].wasted_bytes
    assert doc["a"]["attempts"] - doc["b"]["attempts"] == 8


def test_a_module_that_raced_less_is_fewer(tmp_path: Path) -> None:
    copy = tmp_path / "xfs-once.jsonl"
    _copy_without(T61, copy, lambda ld: ld.module == "xfs" and ld.ret != 0)
    d = bootdiff.diff(bootdiff.load_boot(T61), bootdiff.load_boot(copy),
                      Threshold(pct=1e6))  # the 7 losers' time goes too: not the point here
    xfs = next(m for m in d.modules if m.module == "xfs")
    assert xfs.status == "fewer" and d.modules[0] is xfs
    assert xfs.a is not None and xfs.b is not None
    assert (xfs.a.attempts, xfs.b.attempts) == (8, 1)
    assert (dict(xfs.a.failures), dict(xfs.b.failures)) == ({"EEXIST": 7}, {})
    assert xfs.b.ok == 1 and xfs.b.wasted_bytes == 0 and bootdiff.dup_attempts(xfs.b) == 0
    assert {m.status for m in d.modules if m is not xfs} == {"same"}


def kmodtrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=120, check=False, cwd=Path(__file__).parent.parent)


def test_cli_text_fits_100_columns_and_wide_keeps_everything() -> None:
    p = kmodtrace("boot", "diff", T61, T612)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert all(len(line) <= report.LINE_WIDTH for line in lines)
    assert lines[:2] == [f"A = {T61}", f"B = {T612}"]
    kernel = next(ln.split() for ln in lines if ln.startswith("kernel "))
    assert kernel[1:] == ["6.1.0-56-amd64", "6.12.95+deb12-amd64"]
    dummy = next(ln.split() for ln in lines if ln.split()[1:2] == ["dummy"])
    assert dummy[:3] == [">", "dummy", "10/23"]
    assert "FAILED" in p.stdout
    wide = kmodtrace("boot", "diff", "--wide", T61, T612)
    assert wide.returncode == 0, wide.stderr
    assert "CHANGES" in wide.stdout and "--wide adds" not in wide.stdout
    assert any(len(line) > report.LINE_WIDTH for line in wide.stdout.splitlines())


def test_cli_json_schema() -> None:
    p = kmodtrace("boot", "diff", "--json", "--slower", "30", T61, UDEV)
    assert p.returncode == 0, p.stderr
    doc = check_diff(json.loads(p.stdout))
    assert doc["schema_version"] == 2 and doc["threshold"] == {"pct": 30.0, "ms": 50.0}
    for side, path, kernel in (("a", T61, "6.1.0-56-amd64"), ("b", UDEV, "6.1.0-56-amd64")):
        h = doc[side]
        assert h["path"] == path and h["kernel"] == kernel and h["cpus"] == 2
        assert {"boot_id", "attempts", "repeated_modules", "wasted_bytes", "busy_ns",
                "traced_ns"} <= h.keys()
    assert doc["a"]["boot_id"].startswith("7ae9891b") and doc["a"]["busy_ns"] > 0
    assert doc["counts"]["new"] == 4 and doc["counts"]["gone"] == 12
    acpi = doc["modules"]["acpi_cpufreq"]
    assert acpi["status"] == "new" and acpi["a"] is None
    assert acpi["b"]["failures"] == {"ENODEV": 2, "EBUSY": 2} and acpi["b"]["dup_attempts"] == 2
    assert doc["modules"]["xfs"]["b"] is None and doc["modules"]["xfs"]["status"] == "gone"


def _boots(log: Path) -> None:
    """Two boot traces in log, vm-6.1's the older."""
    for n, (src, boot_id) in enumerate(((T61, "7ae9891b571d"), (T612, "85c177c4bd83"))):
        dst = log / f"boot-{boot_id}.jsonl"
        dst.write_bytes(Path(src).read_bytes())
        os.utime(dst, (1000 + n, 1000 + n))


def test_cli_resolves_boots_as_boot_show_does(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer import boot

    monkeypatch.setattr(boot, "LOG_DIR", str(tmp_path))
    _boots(tmp_path)
    runner = CliRunner()
    by_rel = runner.invoke(main, ["boot", "diff", "--json", "-1", "0"])
    assert by_rel.exit_code == 0, by_rel.output
    doc = json.loads(by_rel.stdout)
    assert doc["a"]["path"] == str(tmp_path / "boot-7ae9891b571d.jsonl")
    assert doc["b"]["path"] == str(tmp_path / "boot-85c177c4bd83.jsonl")
    by_id = runner.invoke(main, ["boot", "diff", "--json", "7ae9", T612])  # and a file
    assert by_id.exit_code == 0, by_id.output
    assert json.loads(by_id.stdout)["modules"] == doc["modules"]


@pytest.mark.parametrize("args", [["-1", "0"], ["deadbeef", "0"], ["nosuch/t.jsonl", "0"],
                                  ["README.md", "0"]])
def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 args: list[str]) -> None:
    from tracer import boot

    log = tmp_path / "log"
    log.mkdir()
    (log / "boot-85c177c4bd83.jsonl").write_bytes(Path(T612).read_bytes())  # one boot only
    monkeypatch.setattr(boot, "LOG_DIR", str(log))
    monkeypatch.chdir(Path(__file__).parent.parent)  # README.md: a file, not a trace
    r = CliRunner().invoke(main, ["boot", "diff", *args])
    assert r.exit_code == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("kmodtrace: ")


def test_a_header_without_the_figures_still_diffs(tmp_path: Path) -> None:
    """A trace from an older or damaged recorder: no cpus, boot id or kernel, no trailer."""
    lines = Path(T61).read_text().splitlines()
    header = json.loads(lines[0])
    for key in ("boot_id", "kernel"):
        del header[key]
    header["cpus"] = "two"
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join([json.dumps(header), *lines[1:-1]]) + "\n")
    d = bootdiff.diff(bootdiff.load_boot(T61), bootdiff.load_boot(bare))
    assert bootdiff.document(d)["b"]["cpus"] is None
    text = bootdiff.render(d)
    assert next(ln.split() for ln in text if ln.startswith("kernel")) == [
        "kernel", "6.1.0-56-amd64", "?"]
    assert next(ln.split() for ln in text if ln.startswith("traced")) == ["traced", "20.04", "s",
                                                                        "-"]


def test_boot_show_takes_minus_one_as_the_boot_before(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer import boot

    monkeypatch.setattr(boot, "LOG_DIR", str(tmp_path))
    _boots(tmp_path)
    runner = CliRunner()
    prev = runner.invoke(main, ["boot", "show", "--json", "-1"])
    assert prev.exit_code == 0, prev.output
    assert json.loads(prev.stdout)["kernel"] == "6.1.0-56-amd64"
    last = runner.invoke(main, ["boot", "show", "0"])
    assert last.exit_code == 0 and "kernel 6.12" in last.stdout
