"""The bench's own arithmetic (its figures come from real runs: kmodtrace bench)."""

from __future__ import annotations

from kmodlab.bench import pyspy_top


def test_pyspy_top_counts_self_and_total_time() -> None:
    raw = "\n".join([
        'run (live.py:260);poll (probes.py:300) 60',
        'run (live.py:260);_release (live.py:160);'
        'feed (correlate.py:80) 30',
        'run (live.py:260) 10',
        "garbage",
    ])
    top = pyspy_top(raw)
    assert top[0] == ("poll (probes.py:300)", 60.0, 60.0)
    assert top[1] == ("feed (correlate.py:80)", 30.0, 30.0)
    assert top[2] == ("run (live.py:260)", 10.0, 100.0)
