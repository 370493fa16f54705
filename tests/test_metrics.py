"""`boot show --metrics` (issue #28, item 3): the Prometheus text format node_exporter's
textfile collector reads, parsed back with prometheus_client's parser; names and units by
Prometheus's conventions; hostile names round-trip through the label escaping; the file
is replaced atomically and never written through a link."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tracer import metrics, reportdata
from tracer.cli import main
from tracer.record import TraceOutputError
from tracer.text import shown

DATA = Path(__file__).parent / "data"
UDEV = DATA / "vm-6.1-udev" / "trace.jsonl"
BOOT = "boot-d9414727656a4571b3478ebcca32860a.jsonl"


def _parse(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """family name -> (type, [(sample name, labels, value)])."""
    return {f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)}


def _udev() -> reportdata.Report:
    return reportdata.read(str(UDEV))


def test_names_and_units_follow_the_conventions() -> None:
    text = metrics.exposition(metrics.families(_udev()))
    fams = _parse(text)
    assert set(fams) == {
        "kmodtrace_boot_info", "kmodtrace_boot_load_attempts",
        "kmodtrace_boot_repeated_modules", "kmodtrace_boot_wasted_bytes",
        "kmodtrace_boot_loading_busy_seconds", "kmodtrace_boot_traced_seconds",
        "kmodtrace_boot_lost_events", "kmodtrace_boot_missed_probes",
        "kmodtrace_boot_counts_complete", "kmodtrace_module_load_attempts",
        "kmodtrace_module_load_failures", "kmodtrace_module_wasted_bytes",
        "kmodtrace_module_span_seconds", "kmodtrace_module_load_seconds",
        "kmodtrace_module_requests"}  # the parser names a counter's family without _total
    for name, (kind, samples) in fams.items():
        assert re.fullmatch(r"kmodtrace_[a-z_]+", name)
        assert kind in ("counter", "gauge")
        for sample, labels, _ in samples:
            # a counter's samples end in _total, nothing else does
            assert sample == (name + "_total" if kind == "counter" else name)
            assert not name.endswith("_total")
            assert labels["kernel"] == "6.1.0-56-amd64" and labels["cpus"] == "2"
        # base units only, named last (before _total)
        assert not re.search(r"(_ms|_ns|_kib|_mib|milli|micro|nano)", name)
        if "bytes" in name:
            assert name.endswith("_bytes")
        if "seconds" in name:
            assert name.endswith("_seconds")
    # no OpenMetrics: the textfile collector does not parse it
    assert "# EOF" not in text and "# UNIT" not in text
    assert text.endswith("\n")


def test_values_are_the_reports() -> None:
    r = _udev()
    fams = _parse(metrics.exposition(metrics.families(r)))

    def per_module(name: str) -> dict[str, float]:
        return {s[1]["module"]: s[2] for s in fams[name][1]}

    rows = r.by_module
    assert per_module("kmodtrace_module_load_attempts") == {
        m: row.attempts for m, row in rows.items()}
    assert per_module("kmodtrace_module_wasted_bytes") == {
        m: row.wasted_bytes for m, row in rows.items()}
    assert per_module("kmodtrace_module_span_seconds") == {
        m: row.span_ns / 1e9 for m, row in rows.items()}
    failures = {(s[1]["module"], s[1]["errno"]): s[2]
                for s in fams["kmodtrace_module_load_failures"][1]}
    assert failures == {(m, e): n for m, row in rows.items() for e, n in row.failures.items()}
    assert failures[("acpi_cpufreq", "EBUSY")] == 2
    assert failures[("acpi_cpufreq", "ENODEV")] == 2
    boot = {n: fams[n][1][0][2] for n in fams if n.startswith("kmodtrace_boot_")}
    assert boot == {
        "kmodtrace_boot_info": 1, "kmodtrace_boot_load_attempts": 10,
        "kmodtrace_boot_repeated_modules": 4,
        "kmodtrace_boot_wasted_bytes": r.loading.wasted_bytes,
        "kmodtrace_boot_loading_busy_seconds": (r.loading.busy_ns or 0) / 1e9,
        "kmodtrace_boot_traced_seconds": (r.loading.traced_ns or 0) / 1e9,
        "kmodtrace_boot_lost_events": 0, "kmodtrace_boot_missed_probes": 0,
        "kmodtrace_boot_counts_complete": 1}
    assert fams["kmodtrace_boot_info"][1][0][1]["boot_id"] == \
        "d9414727-656a-4571-b347-8ebcca32860a"


HOSTILE = 'a"b\\c\nd},x="y"} 1\n# TYPE evil counter\n\x1b]0;pwned\x07é'


@pytest.mark.parametrize(("name", "seen"), [
    (HOSTILE, HOSTILE),  # UTF-8: kept exactly
    ("mod\udcff\udc80x", shown("mod\udcff\udc80x")),  # not UTF-8: shown as `ls -b` does
])
def test_a_hostile_module_name_round_trips(name: str, seen: str) -> None:
    r = _udev()
    row = replace(r.by_module["acpi_cpufreq"], module=name)
    hostile = replace(r, by_module={name: row}, kernel='6.1"\\\n')
    text = metrics.exposition(metrics.families(hostile))
    text.encode("utf-8")  # the file is UTF-8
    fams = _parse(text)
    assert [s[1]["module"] for s in fams["kmodtrace_module_load_attempts"][1]] == [seen]
    assert {s[1]["errno"] for s in fams["kmodtrace_module_load_failures"][1]} == {
        "EBUSY", "ENODEV"}
    assert fams["kmodtrace_boot_info"][1][0][1]["kernel"] == '6.1"\\\n'
    assert "kmodtrace_evil" not in text and "evil" not in fams  # no line was injected


def _boot_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tracer import boot

    log = tmp_path / "log"
    log.mkdir()
    (log / BOOT).write_bytes(UDEV.read_bytes())
    monkeypatch.setattr(boot, "LOG_DIR", str(log))
    return log


def test_boot_show_writes_the_file_atomically(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _boot_dir(tmp_path, monkeypatch)
    out = tmp_path / "textfile" / "kmodtrace.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    before = out.stat().st_ino
    res = CliRunner().invoke(main, ["boot", "show", "--metrics", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (Prometheus text format)" in res.stderr
    assert "acpi_cpufreq" in res.stdout  # boot show's own output still comes
    st = out.stat()
    assert st.st_ino != before  # replaced by rename, not rewritten in place
    assert stat.S_IMODE(st.st_mode) == 0o644  # node_exporter does not run as root
    assert os.listdir(out.parent) == ["kmodtrace.prom"]  # no temporary file left
    assert "kmodtrace_module_load_attempts" in _parse(out.read_text())


def test_boot_show_never_writes_through_a_link(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = _boot_dir(tmp_path, monkeypatch)
    target = tmp_path / "shadow"
    target.write_text("precious\n")
    link = tmp_path / "kmodtrace.prom"
    link.symlink_to(target)
    res = CliRunner().invoke(main, ["boot", "show", "--metrics", str(link)])
    assert res.exit_code == 1
    assert "is a symbolic link" in res.stderr
    assert target.read_text() == "precious\n" and link.is_symlink()
    hard = tmp_path / "hard.prom"
    os.link(target, hard)
    res = CliRunner().invoke(main, ["boot", "show", "--metrics", str(hard)])
    assert res.exit_code == 1 and "hard links" in res.stderr
    assert target.read_text() == "precious\n"
    res = CliRunner().invoke(main, ["boot", "show", "--metrics", str(log / BOOT)])
    assert res.exit_code == 1 and "the trace being read" in res.stderr
    assert (log / BOOT).read_bytes() == UDEV.read_bytes()


def test_a_link_planted_after_the_check_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the first check and the rename: still refused, the temporary file gone."""
    out = tmp_path / "kmodtrace.prom"
    target = tmp_path / "shadow"
    target.write_text("precious\n")
    real = metrics.exposition

    def plant(fams: list[metrics.Family]) -> str:
        out.symlink_to(target)
        return real(fams)

    monkeypatch.setattr(metrics, "exposition", plant)
    with pytest.raises(TraceOutputError, match="symbolic link"):
        metrics.write(str(out), _udev())
    assert target.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["kmodtrace.prom", "shadow"]
