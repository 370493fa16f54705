"""Large traces (issue #24, 8): `report --json` streams the document report.document()
makes, the replay frees what it need not keep, the plot aggregates a row too dense to draw
and says so, and the bench prints figure 7 against its goals. Nothing here is timed: the
times and sizes are the bench's figures (`kmodtrace bench --large-traces`)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kmodlab import bench
from kmodlab.synth import storm, stream
from tests import schema_check
from tracer import report, reportdata
from tracer.cli import main
from tracer.events import Event
from tracer.plot import plot

DATA = Path(__file__).parent / "data"
TRACES = [DATA / d / "trace.jsonl" for d in ("vm-6.1", "vm-6.12", "vm-6.1-udev")]


@pytest.fixture(scope="module")
def oracle_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import zstandard

    out = tmp_path_factory.mktemp("oracle") / "trace.jsonl"
    out.write_bytes(zstandard.ZstdDecompressor().decompress(
        (DATA / "oracle-6.12" / "trace.jsonl.zst").read_bytes(), max_output_size=1 << 30))
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic trace with names a process chose: a byte that is not UTF-8 (a lone
    surrogate, which orjson refuses) and non-ASCII characters (which orjson writes raw)."""
    events = list(stream(5_000))
    odd = storm(7, 3, t0=events[-1].ts_ns + 1_000_000_000)
    for i, ev in enumerate(odd):
        if ev.comm:
            odd[i] = Event(**{**ev.to_dict(), "comm": "k\udcffé" if i % 2 else "wörker"})
    path = tmp_path_factory.mktemp("synth") / "synth.jsonl"
    bench._write_trace(str(path), events + odd)
    return path


def _streamed(r: reportdata.Report) -> bytes:
    chunks: list[bytes] = []
    report.write_document(r, chunks.append)
    return b"".join(chunks)


def _ordered(doc: Any) -> Any:
    """DOC with every object as its list of items: equal only if the keys' order is."""
    if isinstance(doc, dict):
        return [(k, _ordered(v)) for k, v in doc.items()]
    if isinstance(doc, list):
        return [_ordered(v) for v in doc]
    return doc


def _same_document(path: Path) -> None:
    r = reportdata.read(str(path))
    got = _streamed(r)
    assert got.isascii() and got.endswith(b"\n")
    streamed = schema_check.check_report(json.loads(got))
    whole = report.document(r)  # checked against the schema by conftest's hook
    # json-equal, the keys in the same order; and the stories as request_json/load_json
    # (live --json's) with proc_json make them
    assert _ordered(streamed) == _ordered(json.loads(json.dumps(whole, indent=1)))
    assert _ordered(whole["requests"]) == _ordered(
        [report.request_json(q, v, r.ksyms) | report.proc_json(r.procs, q.pid, q.comm)
         for q, v in r.requests])
    assert _ordered(whole["loads"]) == _ordered(
        [report.load_json(ld, v) | report.proc_json(r.procs, ld.pid, ld.comm)
         for ld, v in r.loads])
    # only the whitespace differs: each story is one compact line
    lines = got.decode().splitlines()
    assert sum(1 for ln in lines if ln.startswith('  {"type":"request",')) == len(r.requests)
    assert sum(1 for ln in lines if ln.startswith('  {"type":"load",')) == len(r.loads)


@pytest.mark.parametrize("path", TRACES, ids=[p.parent.name for p in TRACES])
def test_streamed_json_is_the_document_on_recorded_traces(path: Path) -> None:
    _same_document(path)


def test_streamed_json_is_the_document_on_the_oracle_trace(oracle_trace: Path) -> None:
    _same_document(oracle_trace)


def test_streamed_json_is_the_document_on_a_synthetic_trace(synthetic: Path) -> None:
    _same_document(synthetic)
    text = _streamed(reportdata.read(str(synthetic))).decode()
    assert "\\udcff" in text and "\\u00e9" in text and "w\\u00f6rker" in text


def test_report_json_command_streams_the_same_document(synthetic: Path) -> None:
    res = CliRunner().invoke(main, ["report", "--json", str(synthetic)])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == _streamed(reportdata.read(str(synthetic)))


def test_empty_story_lists_are_written_as_json_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    bench._write_trace(str(path), [])
    r = reportdata.read(str(path))
    got = _streamed(r).decode()
    assert '\n "requests": [],\n "loads": [],\n' in got
    assert _ordered(schema_check.check_report(json.loads(got))) == _ordered(report.document(r))


def test_replay_frees_the_events_and_counts_them(synthetic: Path) -> None:
    trace, rep = reportdata.replay_file(str(synthetic), keep_events=False)
    assert trace.events == []
    kept_trace, kept = reportdata.replay_file(str(synthetic))
    assert len(kept_trace.events) == rep.correlator.events > 0
    a, b = reportdata.build(trace, rep), reportdata.build(kept_trace, kept)
    assert a.loss == b.loss and a.loss.events == len(kept_trace.events)
    assert _ordered(report.document(a)) == _ordered(report.document(b))


def _svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_plot_aggregates_dense_rows_and_says_so(synthetic: Path, tmp_path: Path) -> None:
    """50 requests at once on one row cannot have a lane each (MAX_LANES): drawn as counts,
    with a note per row, 'aggregated' in the row's summary and the why in the legend."""
    _, rep = reportdata.replay_file(str(synthetic))
    out = tmp_path / "dense.svg"
    notes = plot(rep, str(out))
    rows = {n.split(": ")[1].removeprefix("row ") for n in notes}
    assert {"mod0", "mod1", "mod7"} <= rows
    assert all("too dense to draw one by one" in n and "drawn as the count in flight" in n
               for n in notes)
    texts = _svg_texts(out)
    assert sum(1 for t in texts if t.endswith(", aggregated")) == len(notes)
    assert any(t.startswith(f"aggregated: {len(notes)} row(s) too dense") for t in texts)


def test_plot_of_sparse_rows_draws_every_bar(tmp_path: Path) -> None:
    """A storm no wider than MAX_LANES is drawn bar by bar: no note, no 'aggregated'."""
    path = tmp_path / "sparse.jsonl"
    bench._write_trace(str(path), storm(1, 5, t0=1_000_000_000))
    _, rep = reportdata.replay_file(str(path))
    out = tmp_path / "sparse.svg"
    assert plot(rep, str(out)) == []
    assert not any("aggregated" in t for t in _svg_texts(out))


def test_report_plot_prints_the_aggregation(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    res = CliRunner().invoke(main, ["report", "--plot", str(out), str(synthetic)])
    assert res.exit_code == 0, res.output
    assert "plot: row mod0: requests and loads too dense to draw one by one" in res.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_bench_prints_figure_7_against_its_goals() -> None:
    def runs(wall: float, cpu: float, rss: float) -> list[dict[str, float]]:
        return [{"wall_s": wall + d, "cpu_s": cpu + d, "rss_mb": rss + 10 * d}
                for d in (0.0, 0.5, -0.5)]

    large = {"events": 1_000_000, "plot_events": 10_000, "loadavg_before": 5.0,
             "loadavg_after": 6.0, "json": runs(12.0, 4.5, 380.0),
             "text": runs(4.0, 4.0, 495.0), "plot": runs(1.5, 1.0, 150.0)}
    lines = bench.render([], None, None, large)
    got = {ln[:44].strip(): (ln[45:81].strip(), ln.rsplit(" ", 1)[1]) for ln in lines[1:-1]}
    assert got["7. report --json, 1,000k events: wall"] == ("12.0 (11.5-12.5) s", "MISSED")
    assert got["7. report --json, 1,000k events: CPU"] == ("4.5 (4.0-5.0) s", "MET")
    assert got["7. report --json, 1,000k events: peak RSS"] == ("380 (375-385) MB", "MET")
    assert got["7. report (text), 1,000k events: peak RSS"] == ("495 (490-500) MB", "MET")
    assert got["7. report --plot PNG, 10k events: wall"] == ("1.5 (1.0-2.0) s", "MET")
    assert got["7. report --plot PNG, 10k events: peak RSS"][1] == "REPORTED"
    assert "load average 5.0 before, 6.0 after" in lines[-1]
