"""Every view renders one Report: the JSON document, the text report, boot show and
live's exit summary give the same counts (attempts, wasted bytes, lost, missed).

The expectations come from the stories and the trace file, not from the Report's own
sums, so that a view or the Report counting its own way fails here."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tracer import report, reportdata
from tracer.live import Run

DATA = Path(__file__).parent / "data"
TRACES = [DATA / n / "trace.jsonl" for n in ("vm-6.1", "vm-6.12", "vm-6.1-udev")]


def _with_losses(src: Path, dst: Path) -> Path:
    """SRC with a trailer that counts losses: the recorded traces lost nothing."""
    lines = src.read_text().splitlines()
    trailer = json.loads(lines[-1]) | {"lost": 3, "missed": 5, "misses": {"finit_entry": 5}}
    dst.write_text("\n".join([*lines[:-1], json.dumps(trailer)]) + "\n")
    return dst


@pytest.fixture(params=[*TRACES, "lossy"], ids=["6.1", "6.12", "6.1-udev", "lossy"])
def trace_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "lossy":
        return _with_losses(TRACES[0], tmp_path / "lossy.jsonl")
    return Path(request.param)


def _expected(path: Path, r: reportdata.Report) -> tuple[int, int, int, int]:
    """(attempts, wasted bytes, lost, missed) from the stories and the trailer."""
    trailer = json.loads(path.read_text().splitlines()[-1])
    attempts = sum(1 for ld, _ in r.loads if ld.ret is not None)
    wasted = sum(v.wasted_bytes for _, v in r.loads if v is not None)
    return attempts, wasted, trailer["lost"], trailer["missed"]


def _text_counts(lines: list[str]) -> tuple[int, str, int, int]:
    """(attempts, wasted as printed, lost, missed) as a text view prints them."""
    words = " ".join(" ".join(lines).split())  # headlines wrap at 100 columns
    head = re.search(r"(\d+) load attempts for \d+ modules; .*?; (\S+) of vmalloc wasted", words)
    loss = re.search(r"(\d+) events, (?:lost )?(\d+)(?: lost)?, (?:missed )?(\d+)", words)
    assert head and loss, words
    return int(head[1]), head[2], int(loss[2]), int(loss[3])


def test_json_text_and_boot_show_give_the_same_counts(trace_path: Path) -> None:
    r = reportdata.read(str(trace_path))
    attempts, wasted, lost, missed = _expected(trace_path, r)
    assert attempts > 0 and wasted > 0
    doc = report.document(r)
    assert (doc["loading"]["attempts"], doc["loading"]["wasted_bytes"], doc["lost_events"],
            doc["missed_probes"]) == (attempts, wasted, lost, missed)
    shown = (attempts, report.human_bytes(wasted), lost, missed)
    for wide in (False, True):
        assert _text_counts(report.render_text(r, wide)) == shown
        assert _text_counts(report.render_boot(r, wide)) == shown


def test_live_summary_gives_the_same_counts(trace_path: Path) -> None:
    """Live's exit summary renders a Report built from what live keeps: its rows and
    counters, no stories."""
    r = reportdata.read(str(trace_path))
    attempts, wasted, lost, missed = _expected(trace_path, r)
    at_exit = reportdata.from_live(
        r.features, r.modules, r.by_module,
        reportdata.Loss(r.loss.events, lost, missed, r.loss.by_hook, True, 0, None),
        (0, 0), 1)
    err = io.StringIO()
    run = SimpleNamespace(filter=SimpleNamespace(module=None), err=err,
                          opts=SimpleNamespace(wide=False))
    Run.print_summary(run, at_exit)  # type: ignore[arg-type]
    lines = err.getvalue().splitlines()
    assert _text_counts(lines) == (attempts, report.human_bytes(wasted), lost, missed)
    assert ("WARNING: events were dropped; counts above are lower bounds." in lines) == \
        bool(lost or missed)


def test_every_view_names_the_hooks_that_missed(tmp_path: Path) -> None:
    r = reportdata.read(str(_with_losses(TRACES[0], tmp_path / "lossy.jsonl")))
    assert report.document(r)["missed_by_hook"] == {"finit_entry": 5}
    for lines in (report.render_text(r), report.render_boot(r)):
        assert "missed by hook: finit_entry 5" in lines


def _enodev_storm(n: int) -> reportdata.Report:
    """The acpi_cpufreq storm on a 6.5+ kernel: N finit_module of one file, the winner's
    init fails -ENODEV and idempotent() hands its waiters that very ret."""
    from dataclasses import replace

    from tracer import bymodule
    from tracer.model import PROFILE_6_5, Model
    from tracer.stories import Load

    model = Model(PROFILE_6_5)
    loads = [Load("finit_module", 100 + i, 100 + i, "systemd-udevd", 1, 1000 + i,
                  end_ns=900_000, ret=-19, file="acpi-cpufreq.ko", dev=1, ino=9, size=4096,
                  kernel_name="acpi_cpufreq", loaded=i == 0,  # the winner's init failed
                  id=i + 1) for i in range(n)]
    for ld in loads:
        model.load_start(ld)
    judged = tuple((ld, model.load_done(ld)) for ld in loads)
    rows = bymodule.join([], judged)
    base = reportdata.read(str(TRACES[1]))
    return replace(base, requests=(), loads=judged, modules=model.modules(), by_module=rows,
                   loading=reportdata.loading(rows, None, 0, 0, 1_000_000))


def test_converged_failures_count_as_failures_in_every_view() -> None:
    """A failing winner's waiters failed too (main.c idempotent_wait_for_completion()):
    every view counts 16 ENODEV, 15 of them marked converged, and 0 bytes for the waiters."""
    from tracer import bootdiff

    r = _enodev_storm(16)
    doc = report.document(r)
    assert [(ld["verdict"], ld["converged"]) for ld in doc["loads"]] == (
        [("ENODEV", False)] + [("ENODEV", True)] * 15)
    assert all(ld["wasted_bytes"] == 0 for ld in doc["loads"])  # init failures, waiters
    m = doc["modules"]["acpi_cpufreq"]
    assert (m["loads_ok"], m["load_failures"], m["converged"], m["converged_failures"]) == (
        0, {"ENODEV": 16}, 15, {"ENODEV": 15})
    row = doc["by_module"]["acpi_cpufreq"]
    assert (row["attempts"], row["ok"], row["failures"], row["converged"],
            row["converged_failures"]) == (16, 0, {"ENODEV": 16}, 15, {"ENODEV": 15})
    cell = "ENODEV:16 (15 converged)"
    assert cell in "\n".join(report.render_boot(r))
    assert cell in "\n".join(report.render_text(r, wide=True))  # both tables
    assert "\n".join(report.render_text(r, wide=True)).count(cell) == 2
    d = bootdiff.diff(bootdiff.Boot("a", _enodev_storm(1)), bootdiff.Boot("b", r))
    text = "\n".join(bootdiff.render(d, wide=True))
    assert "ENODEV:1/16 (0/15 converged)" in text
    b = bootdiff.document(d)["modules"]["acpi_cpufreq"]["b"]
    assert (b["failures"], b["converged_failures"], b["dup_attempts"]) == (
        {"ENODEV": 16}, {"ENODEV": 15}, 15)


def test_len_unknown_is_counted_never_reclassified(tmp_path: Path) -> None:
    """The oracle's trace with every MOD_LEN (module_sig_check()'s return) dropped, as a
    missed kretprobe would: the failures load_module() charged stay in their class, each
    marked len unknown, and the Report counts them for every view."""
    import zstandard

    from tracer.events import Kind

    src = DATA / "oracle-6.12" / "trace.jsonl.zst"
    lines = zstandard.ZstdDecompressor().decompress(
        src.read_bytes(), max_output_size=1 << 30).decode().splitlines()
    kept = [ln for ln in lines if json.loads(ln).get("kind") != int(Kind.MOD_LEN)]
    assert len(kept) < len(lines)
    path = tmp_path / "no-mod-len.jsonl"
    path.write_text("\n".join(kept) + "\n")
    full = tmp_path / "full.jsonl"
    full.write_text("\n".join(lines) + "\n")
    before, r = reportdata.read(str(full)), reportdata.read(str(path))
    charged = [v for _, v in before.loads if v is not None
               and v.byte_class in ("becoming", "invalid")]
    assert len(charged) == 13 and before.loss.len_unknown == 0
    moved = [(a.byte_class, b.byte_class, b.outcome, b.wasted_approx)
             for (_, a), (_, b) in zip(before.loads, r.loads, strict=True)
             if a is not None and b is not None and a.byte_class != b.byte_class]
    # Only blacklisted()'s -EPERM moves: with no MOD_LEN it looks like an LSM refusing the
    # read (failed_kreads), and the verdict says the phase is approximate.
    assert moved == [("becoming", "kread", "EPERM", True)] * 2
    assert r.loss.len_unknown == sum(1 for _, v in r.loads if v is not None
                                     and v.len_unknown) == 11  # 13 less the 2 EPERM
    assert report.document(r)["len_unknown"] == 11
    line = "11 failed load(s) with len unknown"
    assert line in "\n".join(report.render_text(r)) and line in "\n".join(report.render_boot(r))


def test_every_view_warns_when_its_counts_are_lower_bounds(tmp_path: Path) -> None:
    """Losses counted, or a recorder killed before its trailer (nothing says what was
    dropped), make every text view end by saying its counts are lower bounds; a whole
    trace that lost nothing gets no warning."""
    lossy = reportdata.read(str(_with_losses(TRACES[0], tmp_path / "lossy.jsonl")))
    lines = Path(TRACES[0]).read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the trailer gone
    cut = reportdata.read(str(tmp_path / "cut.jsonl"))
    clean = reportdata.read(str(TRACES[0]))
    for view in (report.render_text, report.render_boot):
        assert view(lossy)[-1] == "WARNING: events were dropped; counts above are lower bounds."
        assert view(cut)[-1] == ("WARNING: the trace does not say what was dropped; counts "
                                 "above are lower bounds.")
        assert "lost unknown, missed unknown" in " ".join(view(cut))
        assert not [line for line in view(clean) if line.startswith("WARNING")]
