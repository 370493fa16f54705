"""What both timelines (tracer.perfetto's trace, tracer.plot's chart) share: the track
each story goes on and the extent of a replay. Kept apart so that neither imports the
other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracer.stories import Load, Request

if TYPE_CHECKING:
    from tracer.session import Replay


def request_group(req: Request) -> str:
    """The track a request goes on: its request string."""
    return req.display_name or "(unnamed request)"


def load_group(load: Load) -> str:
    """The track a load attempt goes on: its kmod module name."""
    return load.module or "(unknown module)"


def story_times(req_or_load: Request | Load) -> list[int]:
    """Every timestamp a request or load story has seen."""
    if isinstance(req_or_load, Request):
        r = req_or_load
        ts = [r.start_ns, r.tp_ns, r.end_ns, r.umh_start_ns, r.umh_end_ns]
    else:
        ld = req_or_load
        ts = [ld.start_ns, ld.end_ns, ld.init_start_ns, ld.init_end_ns]
    return [t for t in ts if t is not None]


def time_span(rep: Replay) -> tuple[int, int]:
    """(first, last) timestamp of every story in `rep`; (0, 0) if it has none.

    The one definition of a replay's extent for both timelines.
    """
    ts = [t for r, _ in rep.requests for t in story_times(r)]
    ts += [t for ld, _ in rep.loads for t in story_times(ld)]
    return (min(ts), max(ts)) if ts else (0, 0)
