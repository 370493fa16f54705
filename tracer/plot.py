"""A replayed trace as a timeline picture (PNG or SVG), drawn with matplotlib.

One row per name, grouped as in tracer.timeline: requests by request string, loads by kmod
module name (a request string equal to a module name shares its row). Inside a row, the
requests are stacked on lanes above the load attempts so that concurrent ones stay
visible; past MAX_LANES lanes, bars share lanes. Bars shorter than a pixel or two are
widened to stay visible. matplotlib is imported inside plot(): the CLI starts without it.
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

    @property
    def height(self) -> float:
        return max(MIN_ROW, float(self.req_lanes + self.load_lanes))


def _pack(bars: Sequence[_Bar], min_ns: int) -> int:
    """Greedy interval packing onto at most MAX_LANES lanes; returns the lane count.

    A bar takes at least min_ns (its drawn width plus a gap), so that short bars drawn
    widened do not cover each other."""
    busy: list[int] = []  # per lane: the end of its last bar
    for b in sorted(bars, key=lambda b: (b.start, b.end)):
        free = [i for i, until in enumerate(busy) if until <= b.start]
        if free:
            lane = free[0]
        elif len(busy) < MAX_LANES:
            lane = len(busy)
            busy.append(0)
        else:  # full: share the lane that frees first
            lane = min(range(len(busy)), key=busy.__getitem__)
        b.lane = lane
        busy[lane] = max(busy[lane], b.end, b.start + min_ns)
    return len(busy)


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
        r.req_lanes = _pack([b for _, _, b in r.requests], min_ns)
        r.load_lanes = _pack([b for _, _, b in r.loads], min_ns)
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
    return ", ".join(parts)


def plot(rep: Replay, path: str, title: str = "", keep: str | None = None) -> None:
    """Draw the timeline of `rep` into `path`; the format follows the extension. The file
    is opened as `record -o` opens its trace, never over KEEP (the trace read)."""
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
        ax.legend(handles=handles, loc="upper left", frameon=False, borderaxespad=0,
                  bbox_to_anchor=(1 + SUMMARY_IN / AXES_IN, 1.0))
        with os.fdopen(open_output(path, "plot", keep), "wb") as f:
            fig.savefig(f, format=ext[1:], bbox_inches="tight")


def _draw(ax: Axes, rows: list[_Row], wasted: dict[str, int], t0: int, span_s: float) -> None:
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
            y = r.top + b.lane
            bar_h(REJECTED_COLOR if req.rejected else REQUEST_COLOR, b.start, b.end, y, 0.8)
            if req.umh_start_ns is not None:
                end = req.umh_end_ns if req.umh_end_ns is not None else b.end
                bar_h(MODPROBE_COLOR, req.umh_start_ns, end, y, 0.4)
            if v is not None and v.verdict == "duplicate":
                at = req.tp_ns if req.tp_ns is not None else req.start_ns
                dup_x.append((at - t0) / 1e9)
                dup_y.append(y)
        base = r.top + r.req_lanes
        for ld, lv, b in r.loads:
            y = base + b.lane
            bar_h(OUTCOME_COLORS[load_category(lv)], b.start, b.end, y, 0.8)
            if ld.init_start_ns is not None:
                end = ld.init_end_ns if ld.init_end_ns is not None else b.end
                bar_h(INIT_COLOR, ld.init_start_ns, end, y, 0.35)
    order = [REQUEST_COLOR, REJECTED_COLOR, *OUTCOME_COLORS.values(), MODPROBE_COLOR,
             INIT_COLOR]
    for key in sorted(bars, key=lambda k: order.index(k.split("/")[0])):
        lefts, widths, ys, height = bars[key]
        ax.barh(ys, widths, left=lefts, height=height, color=key.split("/")[0],
                linewidth=0, zorder=2)
    if dup_x:
        ax.scatter(dup_x, dup_y, marker="x", s=14, color=DUP_COLOR, linewidths=0.9, zorder=3)
    ax.set_yticks(ticks, [_label(r.name) for r in rows])
    ax.tick_params(axis="y", length=0)
