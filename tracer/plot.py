"""A replayed trace as a timeline picture (PNG or SVG), drawn with matplotlib.

One row per name, grouped as in tracer.timeline: requests by request string, loads by kmod
module name (a request string equal to a module name shares its row). Inside a row, the
requests are stacked on lanes above the load attempts so that concurrent ones stay
visible. Bars shorter than a pixel or two are widened to stay visible. A row whose
requests (or loads) need more than MAX_LANES lanes is too dense to draw one by one: its
stories of that kind are drawn aggregated, as the count in flight per pixel column stacked
by colour, and the row's summary and plot()'s notes say so. Bars of one colour are one
PolyCollection (a patch per bar took 6 s for 10k events). matplotlib is imported inside
plot(): the CLI starts without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from tracer import report
from tracer.model import LoadVerdict, RequestVerdict
from tracer.record import open_output
from tracer.session import Replay
from tracer.stories import Load, Request
from tracer.text import shown
from tracer.timeline import load_group, request_group, time_span

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

FORMATS: Final = (".png", ".svg")
MAX_LANES: Final = 10  # per kind (requests, loads) in one row
DENSE_LANES: Final = 4  # the height of a kind drawn aggregated, its peak count filling it
LANE_IN: Final = 0.11  # inches per lane
ROW_GAP: Final = 1.0  # lanes of space between rows
MIN_ROW: Final = 2.0  # lanes: the least height of a row
# Figure layout, inches: y labels | timeline | row summaries | legend.
LABELS_IN: Final = 1.5
AXES_IN: Final = 9.5
SUMMARY_IN: Final = 2.6
LEGEND_IN: Final = 2.4
TOP_IN: Final = 0.8
BOTTOM_IN: Final = 0.6
MAX_WASTED_LINES: Final = 15
MIN_BAR_FRACTION: Final = 0.0012  # of the time span: the narrowest bar drawn

REQUEST_COLOR: Final = "#9ecae1"
REJECTED_COLOR: Final = "#bdbdbd"
MODPROBE_COLOR: Final = "#3182bd"
OUTCOME_COLORS: Final = {
    "loaded": "#2ca02c",
    "EEXIST": "#ff7f0e",
    "other": "#8c564b",
    "converged": "#9467bd",
}
INIT_COLOR: Final = "#0b4d0b"
DUP_COLOR: Final = "#e41a1c"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    return report.human_bytes(n, sep=" ")


def load_category(v: LoadVerdict | None) -> str:
    """Bar colour class of a load attempt: loaded, EEXIST, converged or other."""
    outcome = "unknown" if v is None else "converged" if v.converged else v.outcome
    return outcome if outcome in OUTCOME_COLORS else "other"


@dataclass(slots=True)
class _Bar:
    start: int
    end: int
    lane: int = 0


@dataclass(slots=True)
class _Row:
    name: str
    first: int
    requests: list[tuple[Request, RequestVerdict | None, _Bar]] = field(default_factory=list)
    loads: list[tuple[Load, LoadVerdict | None, _Bar]] = field(default_factory=list)
    req_lanes: int = 0
    load_lanes: int = 0
    top: float = 0.0  # y of the row's first lane (the axis is inverted)
    # too dense to draw one by one (more than MAX_LANES at once): drawn aggregated
    req_dense: bool = False
    load_dense: bool = False

    @property
    def height(self) -> float:
        return max(MIN_ROW, float(self.req_lanes + self.load_lanes))


def _pack(bars: Sequence[_Bar], min_ns: int) -> tuple[int, bool]:
    """Greedy interval packing onto at most MAX_LANES lanes; returns the lane count and
    whether they overflowed (some bars would have had to share a lane: too dense to draw
    one by one, so the caller aggregates them).

    A bar takes at least min_ns (its drawn width plus a gap), so that short bars drawn
    widened do not cover each other."""
    busy: list[int] = []  # per lane: the end of its last bar
    for b in sorted(bars, key=lambda b: (b.start, b.end)):
        lane = next((i for i, until in enumerate(busy) if until <= b.start), len(busy))
        if lane == MAX_LANES:
            return MAX_LANES, True
        if lane == len(busy):
            busy.append(0)
        b.lane = lane
        busy[lane] = max(b.end, b.start + min_ns)
    return len(busy), False


def _rows(rep: Replay, last: int, min_ns: int) -> list[_Row]:
    rows: dict[str, _Row] = {}

    def row(name: str, start: int) -> _Row:
        r = rows.get(name)
        if r is None:
            r = rows[name] = _Row(name, start)
        r.first = min(r.first, start)
        return r

    for req, rv in rep.requests:
        end = req.end_ns if req.end_ns is not None else max(last, req.start_ns)
        row(request_group(req), req.start_ns).requests.append((req, rv, _Bar(req.start_ns, end)))
    for ld, lv in rep.loads:
        end = ld.end_ns if ld.end_ns is not None else max(last, ld.start_ns)
        row(load_group(ld), ld.start_ns).loads.append((ld, lv, _Bar(ld.start_ns, end)))
    out = sorted(rows.values(), key=lambda r: (r.first, r.name))
    y = 0.0
    for r in out:
        r.req_lanes, r.req_dense = _pack([b for _, _, b in r.requests], min_ns)
        r.load_lanes, r.load_dense = _pack([b for _, _, b in r.loads], min_ns)
        if r.req_dense:
            r.req_lanes = DENSE_LANES
        if r.load_dense:
            r.load_lanes = DENSE_LANES
        r.top = y
        y += r.height + ROW_GAP
    return out


def _label(s: str) -> str:
    """S as a plot label: escaped (tracer/text.py: a control character would also make the
    SVG invalid XML), and a `$` literal, not the start of matplotlib's mathtext."""
    return shown(s).replace("$", "\\$")


def _row_summary(r: _Row, wasted: int) -> str:
    parts = []
    if r.requests:
        dups = sum(1 for _, v, _ in r.requests if v is not None and v.verdict == "duplicate")
        parts.append(f"{len(r.requests)} req" + (f" ({dups} dup)" if dups else ""))
    if r.loads:
        ok = sum(1 for _, v, _ in r.loads if load_category(v) == "loaded")
        n = len(r.loads)
        parts.append(f"{n} load{'s' if n > 1 else ''}" + (f" ({ok} ok)" if ok != n else ""))
    if wasted:
        parts.append(human_bytes(wasted))
    if r.req_dense or r.load_dense:
        parts.append("aggregated")
    return ", ".join(parts)


def _dense_kinds(r: _Row) -> list[str]:
    return [k for k, dense in (("requests", r.req_dense), ("loads", r.load_dense)) if dense]


def dense_notes(rows: Sequence[_Row]) -> list[str]:
    """One line per row drawn aggregated, for the caller to print (escaped, as every line)."""
    return [f"plot: row {r.name}: {' and '.join(_dense_kinds(r))} too dense to draw "
            f"one by one ({len(r.requests)} requests, {len(r.loads)} loads); drawn as the "
            f"count in flight" for r in rows if r.req_dense or r.load_dense]


def plot(rep: Replay, path: str, title: str = "", keep: str | None = None) -> list[str]:
    """Draw the timeline of `rep` into `path`; the format follows the extension. The file
    is opened as `record -o` opens its trace, never over KEEP (the trace read). Returns
    a note per row drawn aggregated (too dense to draw one by one), for the caller to
    print."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unsupported image format {ext or '(none)'!r}: "
                         f"use one of {', '.join(FORMATS)}")
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t0, last = time_span(rep)
    span_s = max((last - t0) / 1e9, 1e-3)
    rows = _rows(rep, last, int(span_s * 1e9 * MIN_BAR_FRACTION * 2))
    mods = rep.judge.model.modules()
    wasted = {name: m.wasted_bytes for name, m in mods.items() if m.wasted_bytes > 0}

    total_lanes = sum(r.height + ROW_GAP for r in rows) or MIN_ROW + ROW_GAP
    plot_h = max(2.5, total_lanes * LANE_IN)
    fig_w = LABELS_IN + AXES_IN + SUMMARY_IN + LEGEND_IN
    fig_h = TOP_IN + plot_h + BOTTOM_IN
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig = Figure(figsize=(fig_w, fig_h), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((LABELS_IN / fig_w, BOTTOM_IN / fig_h, AXES_IN / fig_w, plot_h / fig_h))
        _draw(ax, rows, wasted, t0, span_s)
        ax.set_ylim(total_lanes - ROW_GAP / 2, -ROW_GAP / 2)
        ax.set_xlim(-0.01 * span_s, span_s * 1.01)
        ax.set_xlabel("seconds from the first event (CLOCK_MONOTONIC)")
        ax.tick_params(axis="x", labeltop=True, top=True)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        if not rows:
            ax.text(0.5, 0.5, "no requests or loads in this trace", ha="center",
                    va="center", transform=ax.transAxes)
        n_dup = sum(1 for _, v in rep.requests if v is not None and v.verdict == "duplicate")
        ax.set_title(_label(title) if title else (
            f"kmodtrace: {len(rep.requests)} requests ({n_dup} duplicates), "
            f"{len(rep.loads)} load attempts, {human_bytes(sum(wasted.values()))} wasted"),
            loc="left", pad=20, fontsize=10)

        handles: list[Artist] = [
            Patch(color=REQUEST_COLOR, label="request (entry to return)"),
            Patch(color=MODPROBE_COLOR, label="modprobe helper"),
            Patch(color=REJECTED_COLOR, label="rejected request"),
            Line2D([], [], color=DUP_COLOR, marker="x", linestyle="none",
                   label="duplicate (dups.c) at arrival"),
            *(Patch(color=c, label=f"load: {k}") for k, c in OUTCOME_COLORS.items()),
            Patch(color=INIT_COLOR, label="module init"),
            Patch(alpha=0.0, label=" "),
            Patch(alpha=0.0, label="vmalloc wasted (MODULE_STATS):"),
        ]
        top = sorted(wasted.items(), key=lambda kv: (-kv[1], kv[0]))
        labels = [f"{_label(name)}: {human_bytes(n)} wasted"
                  for name, n in top[:MAX_WASTED_LINES]]
        if len(top) > MAX_WASTED_LINES:
            rest = top[MAX_WASTED_LINES:]
            labels.append(f"{len(rest)} more: {human_bytes(sum(n for _, n in rest))} wasted")
        labels.append(f"total: {human_bytes(sum(wasted.values()))} wasted")
        handles += [Patch(alpha=0.0, label=text) for text in labels]
        notes = dense_notes(rows)
        if notes:
            handles += [Patch(alpha=0.0, label=" "), Patch(alpha=0.0, label=(
                f"aggregated: {len(notes)} row(s) too dense to draw\none by one, "
                "drawn as the count in flight"))]
        ax.legend(handles=handles, loc="upper left", frameon=False, borderaxespad=0,
                  bbox_to_anchor=(1 + SUMMARY_IN / AXES_IN, 1.0))
        with os.fdopen(open_output(path, "plot", keep), "wb") as f:
            fig.savefig(f, format=ext[1:], bbox_inches="tight")
    return notes


_ORDER: Final = [REQUEST_COLOR, REJECTED_COLOR, *OUTCOME_COLORS.values(), MODPROBE_COLOR,
                 INIT_COLOR]
COUNT_BINS: Final = 1000  # columns an aggregated row is counted in: about a pixel each


def _draw_counts(ax: Axes, bars: list[tuple[str, _Bar]], top: float, lanes: int, t0: int,
                 span_s: float) -> None:
    """BARS (colour, extent) as the count in flight per column, stacked by colour in
    _ORDER, the peak filling the LANES lanes from TOP."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    span_ns = span_s * 1e9
    by_color: dict[str, list[_Bar]] = {}
    for color, b in bars:
        by_color.setdefault(color, []).append(b)
    counts = []
    for color in sorted(by_color, key=_ORDER.index):
        bs = by_color[color]
        first = np.array([b.start - t0 for b in bs], dtype=np.float64) / span_ns * COUNT_BINS
        last = np.array([b.end - t0 for b in bs], dtype=np.float64) / span_ns * COUNT_BINS
        diff = np.zeros(COUNT_BINS + 1, dtype=np.int64)
        np.add.at(diff, np.clip(first.astype(np.int64), 0, COUNT_BINS - 1), 1)
        np.add.at(diff, np.clip(last.astype(np.int64), 0, COUNT_BINS - 1) + 1, -1)
        counts.append((color, np.cumsum(diff[:-1])))
    total = sum(c for _, c in counts)
    scale = lanes / max(int(np.max(total)), 1)
    # each band one polygon, its steps traced along the top and back along the bottom
    # (ax.stairs() costs a Bezier walk per step to update the data limits, set here anyway)
    xs = np.repeat(np.linspace(0.0, span_s, COUNT_BINS + 1), 2)[1:-1]
    bottom = top + lanes - 0.5  # the axis is inverted: counts grow upwards, to smaller y
    below = np.zeros(COUNT_BINS)
    for color, c in counts:
        upper, lower = np.repeat(bottom - (below + c) * scale, 2), np.repeat(
            bottom - below * scale, 2)
        verts = np.concatenate([np.column_stack([xs, upper]),
                                np.column_stack([xs[::-1], lower[::-1]])])
        ax.add_collection(PolyCollection([verts], facecolors=color, linewidths=0, zorder=2),
                          autolim=False)
        below = below + c


def _draw(ax: Axes, rows: list[_Row], wasted: dict[str, int], t0: int, span_s: float) -> None:
    import numpy as np
    from matplotlib.collections import PolyCollection

    min_w = span_s * MIN_BAR_FRACTION
    bars: dict[str, tuple[list[float], list[float], list[float], float]] = {}

    def bar_h(color: str, start: int, end: int, y: float, height: float) -> None:
        key = f"{color}/{height}"
        lefts, widths, ys, _ = bars.setdefault(key, ([], [], [], height))
        lefts.append((start - t0) / 1e9)
        widths.append(max((end - start) / 1e9, min_w))
        ys.append(y)

    dup_x: list[float] = []
    dup_y: list[float] = []
    ticks: list[float] = []
    for i, r in enumerate(rows):
        center = r.top + r.height / 2 - 0.5
        ticks.append(center)
        if i % 2 == 0:
            ax.axhspan(r.top - ROW_GAP / 2, r.top + r.height - 0.5 + ROW_GAP / 2,
                       color="#f4f4f4", zorder=0, linewidth=0)
        ax.text(1.005, center, _row_summary(r, wasted.get(r.name, 0)), va="center",
                ha="left", fontsize=7, color="#444444",
                transform=ax.get_yaxis_transform())
        for req, v, b in r.requests:
            y = r.top if r.req_dense else r.top + b.lane
            if v is not None and v.verdict == "duplicate":
                at = req.tp_ns if req.tp_ns is not None else req.start_ns
                dup_x.append((at - t0) / 1e9)
                dup_y.append(y)
            if r.req_dense:
                continue
            bar_h(REJECTED_COLOR if req.rejected else REQUEST_COLOR, b.start, b.end, y, 0.8)
            if req.umh_start_ns is not None:
                end = req.umh_end_ns if req.umh_end_ns is not None else b.end
                bar_h(MODPROBE_COLOR, req.umh_start_ns, end, y, 0.4)
        if r.req_dense:
            _draw_counts(ax, [(REJECTED_COLOR if q.rejected else REQUEST_COLOR, b)
                              for q, _, b in r.requests], r.top, r.req_lanes, t0, span_s)
        base = r.top + r.req_lanes
        if r.load_dense:
            _draw_counts(ax, [(OUTCOME_COLORS[load_category(lv)], b) for _, lv, b in r.loads],
                         base, r.load_lanes, t0, span_s)
            continue
        for ld, lv, b in r.loads:
            y = base + b.lane
            bar_h(OUTCOME_COLORS[load_category(lv)], b.start, b.end, y, 0.8)
            if ld.init_start_ns is not None:
                end = ld.init_end_ns if ld.init_end_ns is not None else b.end
                bar_h(INIT_COLOR, ld.init_start_ns, end, y, 0.35)
    for key in sorted(bars, key=lambda k: _ORDER.index(k.split("/")[0])):
        lefts, widths, ys, height = bars[key]
        x0, y0 = np.asarray(lefts), np.asarray(ys) - height / 2
        x1, y1 = x0 + np.asarray(widths), y0 + height
        verts = np.stack([np.column_stack(c) for c in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))],
                         axis=1)
        ax.add_collection(PolyCollection(list(verts), facecolors=key.split("/")[0], linewidths=0,
                                         zorder=2), autolim=False)
    if dup_x:
        ax.scatter(dup_x, dup_y, marker="x", s=14, color=DUP_COLOR, linewidths=0.9, zorder=3)
    ax.set_yticks(ticks, [_label(r.name) for r in rows])
    ax.tick_params(axis="y", length=0)
