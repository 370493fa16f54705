"""Timeline pictures of the recorded 6.1 storms: a real PNG, an SVG with the right text."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tracer.kernel import Features
from tracer.model import LoadVerdict
from tracer.plot import OUTCOME_COLORS, human_bytes, load_category, plot
from tracer.record import read_trace
from tracer.session import Replay, replay

TRACE = Path(__file__).parent / "data" / "vm-6.1" / "trace.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rep() -> Replay:
    trace = read_trace(str(TRACE))
    return replay(trace.events, trace.features.profile)


def _svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def _hex(c: str) -> tuple[int, int, int]:
    return (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16))


def test_png(rep: Replay, tmp_path: Path) -> None:
    import matplotlib.image
    import numpy as np

    out = tmp_path / "t.png"
    plot(rep, str(out), title="vm 6.1")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(str(out))
    h, w, channels = img.shape
    assert channels in (3, 4)
    assert w >= 1200 and h >= 900, (w, h)  # 16 rows: taller than a default figure
    rgb = np.rint(img[..., :3].reshape(-1, 3) * 255).astype(np.int64)
    packed = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])
    pixels = {(int(c) >> 16, (int(c) >> 8) & 0xFF, int(c) & 0xFF) for c in packed}
    # Bars were drawn in the load outcome colours seen in this trace, and the duplicates.
    for outcome in ("loaded", "EEXIST"):
        assert _hex(OUTCOME_COLORS[outcome]) in pixels, outcome
    assert len(pixels) > 50


def test_svg(rep: Replay, tmp_path: Path) -> None:
    out = tmp_path / "t.svg"
    plot(rep, str(out))
    texts = _svg_texts(out)
    # One row label per request string and module name.
    for label in ("xfs", "dummy", "fs-minix", "minix", "kmt-no-such-module", "appletalk"):
        assert label in texts, label
    # The legend names each module's wasted bytes.
    assert "xfs: 56.3 MiB wasted" in texts
    mods = rep.judge.model.modules()
    for name, m in mods.items():
        if m.wasted_bytes:
            assert f"{name}: {human_bytes(m.wasted_bytes)} wasted" in texts, name
    total = sum(m.wasted_bytes for m in mods.values())
    assert f"total: {human_bytes(total)} wasted" in texts
    title = next(t for t in texts if t.startswith("kmodtrace:"))
    assert "89 requests (74 duplicates)" in title and "63 load attempts" in title
    assert "seconds from the first event (CLOCK_MONOTONIC)" in texts


def test_svg_title(rep: Replay, tmp_path: Path) -> None:
    out = tmp_path / "T.SVG"
    plot(rep, str(out), title="storms on 6.1")
    assert "storms on 6.1" in _svg_texts(out)


@pytest.mark.parametrize("name", ["t.pdf", "t", "t.png.txt"])
def test_unsupported_extension(rep: Replay, tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="unsupported image format"):
        plot(rep, str(tmp_path / name))
    assert not (tmp_path / name).exists()


def test_empty_replay(tmp_path: Path) -> None:
    out = tmp_path / "e.png"
    plot(replay([], Features.from_dict({}).profile), str(out))
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_matplotlib_is_imported_lazily() -> None:
    code = ("import sys, tracer.plot, tracer.perfetto, tracer.cli; "
            "sys.exit('matplotlib' in sys.modules)")
    root = Path(__file__).parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_helpers() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(59 * 2**20 + 2**19) == "59.5 MiB"

    def lv(outcome: str, converged: bool = False) -> LoadVerdict:
        return LoadVerdict(1, "m", "finit_module", -16, outcome, None, 0, None, False, 0,
                           converged=converged)
    assert load_category(lv("EBUSY")) == "other"
    assert load_category(lv("ENODEV", converged=True)) == "converged"
    assert load_category(None) == "other"
