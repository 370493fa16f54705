"""Names a traced process controls (issue #24, item 1): every byte from 1 to 255 in
comm, module and request names, file paths and udev properties survives capture exactly,
the trace file and JSON carry it exactly, and no human output shows it raw."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer import bymodule, report, reportdata, text
from tracer.cli import main
from tracer.events import CEvent, Event, Kind, decode
from tracer.live import Run
from tracer.options import Options
from tracer.record import TraceWriter, make_header, read_trace
from tracer.udev import WORKER_COMMS

DATA = Path(__file__).parent / "data"
UDEV_TRACE = DATA / "vm-6.1-udev" / "trace.jsonl"
STORM_TRACE = DATA / "vm-6.1" / "trace.jsonl"  # requests by mount, modprobe...
EVERY_BYTE = bytes(range(1, 256))
PWN_COMM = b"\x1b]0;pwned\x07"  # sets the terminal's title
OSC52 = b"\x1b]52;c;cHduZWQ=\x07"  # writes the clipboard
# A terminal sees nothing but printable text and line ends: no C0 but \n, no DEL, and
# (as UTF-8) no C1 and no byte that is not UTF-8.
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _chunks(size: int) -> list[bytes]:
    """EVERY_BYTE cut into pieces that fit a char[SIZE] with its NUL."""
    return [EVERY_BYTE[i:i + size - 1] for i in range(0, len(EVERY_BYTE), size - 1)]


def _record(**fields: int | bytes) -> bytes:
    c = CEvent()
    for k, v in fields.items():
        setattr(c, k, v)
    return bytes(c)


def test_decode_keeps_every_byte_of_every_string_field() -> None:
    for name, size in (("comm", 16), ("name", 64), ("path", 128)):
        for chunk in _chunks(size):
            ev = decode(_record(kind=Kind.REQ_ENTER, **{name: chunk}))
            assert os.fsencode(getattr(ev, name)) == chunk


def _hostile_events(src: Path) -> list[Event]:
    """A recorded trace whose strings a hostile process chose, each made of bytes
    from 1 to 255 after its own name (so stories still join), through decode()."""
    names: dict[str, bytes] = {}
    pieces = itertools.cycle(_chunks(24))

    def name(s: str) -> bytes:  # one consistent name per name: the model joins by them
        if s not in names:
            names[s] = (s.encode() + next(pieces))[:63]
        return names[s]

    def path(ev: Event) -> bytes:
        if ev.kind != Kind.UDEV_DEVICE:
            return (OSC52 + ev.path.encode() + b"\n")[:127]
        lines = ev.path.split("\n")
        # each property's value gets bytes (but its line end, which parse_properties
        # splits at): the DEVPATH and SUBSYSTEM perfetto and the report show
        out = b"\n".join(line.encode() + next(pieces).replace(b"\n", b"")
                         if "=" in line else line.encode() for line in lines[:-1])
        return (out + b"\n" + lines[-1].encode())[:127]

    out = []
    for ev in read_trace(str(src)).events:
        comm = ev.comm.encode() if ev.comm in WORKER_COMMS else PWN_COMM
        fields = {k: getattr(ev, k) for k in Event.__struct_fields__
                  if k not in ("comm", "name", "path")}
        out.append(decode(_record(**fields, comm=comm, name=name(ev.name) if ev.name else b"",
                                  path=path(ev) if ev.path else b"")))
    used = {b for ev in out for b in os.fsencode(ev.name + ev.path)}
    assert used >= set(EVERY_BYTE)
    return out


@pytest.fixture(scope="module", params=[STORM_TRACE, UDEV_TRACE], ids=["storm", "udev"])
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile trace as `record` writes it, with proc and device records too."""
    path = tmp_path_factory.mktemp("hostile") / "trace.jsonl"
    events = _hostile_events(request.param)
    (path.parent / "src").write_text(str(request.param))
    writer = TraceWriter(str(path))
    writer.write(make_header({}, [], []))
    for ev in events:
        writer.event(ev)
    bad = os.fsdecode(OSC52 + EVERY_BYTE)
    writer.proc(events[0].pid, events[0].comm, bad, (bad,))
    writer.device(bad, bad)
    writer.close({"lost": 0, "missed": 0})
    return path


def test_the_trace_file_carries_every_byte_exactly(hostile: Path) -> None:
    trace = read_trace(str(hostile))
    assert trace.bad_lines == 0
    assert trace.events == _hostile_events(Path((hostile.parent / "src").read_text()))
    bad = os.fsdecode(OSC52 + EVERY_BYTE)
    assert trace.modaliases == {bad: bad}
    assert list(trace.procs.values()) == [(bad, (bad,))]
    # valid UTF-8 throughout, a byte that is not UTF-8 as its \udcNN escape
    assert "\\udcff" in hostile.read_bytes().decode("utf-8")


def _safe(out: str) -> str:
    """OUT, asserted free of anything a terminal would act on."""
    assert _RAW.search(out) is None, repr(_RAW.search(out))
    return out


def _seen(out: str, hostile: Path) -> bool:
    """Whether OUT shows what the hostile trace's processes chose, escaped: the storm's
    comm, the udev trace's module names and properties."""
    if "vm-6.1-udev" in (hostile.parent / "src").read_text():
        return "\\x7f" in out or "\\xff" in out or "\\x1b" in out
    return "\\x1b]0;pwned\\x07" in out


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return _safe(res.stdout) + _safe(res.stderr)


@pytest.mark.parametrize("wide", [[], ["--wide"]], ids=["default", "wide"])
def test_report_text_shows_hostile_names_escaped(hostile: Path, wide: list[str]) -> None:
    out = _cli("report", *wide, str(hostile))
    assert _seen(out, hostile)
    if wide:
        assert "\\x1b]52;c;cHduZWQ=\\x07" in out  # the file path


def test_report_json_round_trips_exactly(hostile: Path) -> None:
    out = _cli("report", "--json", str(hostile))
    assert out.isascii()
    doc = json.loads(out)
    assert doc == report.document(reportdata.read(str(hostile)))
    assert "\\u001b" in out and "\\udc" in out


def test_boot_show_and_diff_escape(hostile: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer import boot

    monkeypatch.setattr(boot, "LOG_DIR", str(tmp_path))
    (tmp_path / "boot-7ae9891b571d.jsonl").write_bytes(hostile.read_bytes())
    assert "\\x" in _cli("boot", "show", "--wide")  # the hostile module names
    diff = _cli("boot", "diff", "--wide", str(UDEV_TRACE), str(hostile))
    assert "\\x" in diff  # the hostile module names, new in B
    json.loads(_cli("boot", "diff", "--json", str(UDEV_TRACE), str(hostile)))


def test_live_lines_escape(hostile: Path) -> None:
    rep = reportdata.replay_file(str(hostile))[1]
    for wide in (False, True):
        run = Run.__new__(Run)  # the line formatting only: no probes, no judge
        run.opts, run.out, run.shown, run.t0_ns = Options(wide=wide), io.StringIO(), 0, 0
        run.by_module, run.filter = bymodule.ByModule(), reportdata.Filter(None, None)
        for req, v in rep.requests:
            run._show_request(req, v)
        for load, lv in rep.loads:
            run._show_load(load, lv)
        assert _seen(_safe(run.out.getvalue()), hostile)


def test_the_svg_plot_parses_and_escapes(hostile: Path, tmp_path: Path) -> None:
    svg = tmp_path / "t.svg"
    _cli("report", "--plot", str(svg), str(hostile))
    root = ET.parse(svg).getroot()
    labels = "".join(root.itertext())
    assert _RAW.search(labels) is None and "\\x" in labels


def test_perfetto_json_round_trips(hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    _cli("report", "--perfetto", str(out), str(hostile))
    raw = out.read_text()
    assert raw.isascii() and "\\udc" in raw  # bytes that are not UTF-8, escaped
    assert re.search("[\udc80-\udcff]", json.dumps(json.loads(raw), ensure_ascii=False))


def test_an_error_line_escapes_the_path(tmp_path: Path) -> None:
    bad = tmp_path / os.fsdecode(b"\x1b]0;pwned\x07\xff")
    res = CliRunner().invoke(main, ["report", str(bad)])
    assert res.exit_code == 1
    assert "\\x1b]0;pwned\\x07\\xff" in _safe(res.stderr)


@pytest.mark.parametrize(("raw", "seen"), [
    ("\x1b[2J", "\\x1b[2J"), ("a\nb\tc\rd", "a\\nb\\tc\\rd"), ("\x7f", "\\x7f"),
    ("\x9b", "\\u009b"), ("\udcff", "\\xff"), ("back\\slash", "back\\\\slash"),
    ("\u202e", "\\u202e"), ("é ü 模块", "é ü 模块"), ("", "")])
def test_shown(raw: str, seen: str) -> None:
    assert text.shown(raw) == seen


# Item 2: every output path is opened as `record -o` opens its trace.
def _refused(tmp_path: Path, flag: str, out: Path, trace: Path) -> str:
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    res = CliRunner().invoke(main, ["report", flag, str(out), str(trace)])
    assert res.exit_code == 1 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmodtrace: "), res.stderr
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    return lines[0]


@pytest.mark.parametrize(("flag", "name"), [("--perfetto", "p.json"), ("--plot", "p.svg")])
def test_an_output_through_a_symlink_is_refused(tmp_path: Path, flag: str, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / name).symlink_to(victim)
    assert _refused(tmp_path, flag, tmp_path / name, STORM_TRACE).endswith(
        "is a symbolic link: a {} is never written through one (remove the link or choose "
        "another output path)".format("Perfetto trace" if flag == "--perfetto" else "plot"))


@pytest.mark.parametrize(("flag", "name"), [("--perfetto", "p.json"), ("--plot", "p.svg")])
def test_an_output_with_another_hard_link_is_refused(tmp_path: Path, flag: str,
                                                     name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.link(victim, tmp_path / name)
    assert _refused(tmp_path, flag, tmp_path / name, STORM_TRACE) == (
        f"kmodtrace: {tmp_path / name} has 2 hard links: writing it would change another "
        "file too (remove it or choose another output path)")


@pytest.mark.parametrize("flag", ["--perfetto", "--plot"])
def test_the_input_trace_is_never_an_output(tmp_path: Path, flag: str) -> None:
    trace = tmp_path / "t.svg"  # an extension --plot takes, so only the input refuses it
    trace.write_bytes(STORM_TRACE.read_bytes())
    assert _refused(tmp_path, flag, trace, trace) == (
        f"kmodtrace: {trace} is {trace}, the trace being read: writing it would destroy it "
        "(choose another output path)")


def test_open_output_refuses_the_input_when_it_is_opened(tmp_path: Path) -> None:
    """Past the early check (a path swapped in between) open_output refuses it again."""
    from tracer.record import TraceOutputError, open_output

    trace = tmp_path / "t.jsonl"
    trace.write_text("x\n")
    with pytest.raises(TraceOutputError, match="the trace being read"):
        open_output(str(trace), "plot", keep=str(trace))
    assert trace.read_text() == "x\n"
