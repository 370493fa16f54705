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


def _pair(udevd: float, trigger: float, last: float, done: float, ready: float | None = None,
          ) -> dict[str, float | bool]:
    s: dict[str, float | bool] = {"udevd_s": udevd, "trigger_s": trigger,
                                  "udev_last_load_s": last, "boot_finished_s": done}
    if ready is not None:
        s["ready_s"] = ready
        s["udev_started_before_ready"] = udevd < ready and trigger < ready
    return s


def test_boot_figure_medians_spread_and_verdict() -> None:
    """Figure 6: alternating pairs without and with the unit, the medians' ratio per metric
    against 1.03, each side's spread, and the binary fact from systemd's timestamps."""
    from kmodlab.bench import boot_comparison, render

    unit = [_pair(62, 63, 204, 320, 90), _pair(66, 67, 206, 330, 95),
            _pair(80, 81, 230, 350, 99)]
    boot = {"cpus": 16,
            "no_unit": [_pair(60, 61, 200, 300), _pair(70, 71, 210, 310), _pair(65, 66, 205, 305)],
            "unit": unit}
    cmp = boot_comparison(boot)
    assert cmp["pairs"] == 3 and cmp["not_held"] is True
    m = cmp["metrics"]["udevd_s"]
    assert m["without"] == 65 and m["with"] == 66 and m["ratio"] == 66 / 65
    assert m["spread_without"] == (60, 70) and m["spread_with"] == (62, 80)
    lines = "\n".join(render([], None, boot))
    assert "udevd started, with the unit / without (16 vCPUs, median of 3 pairs)" in lines
    assert "1.02x (66.0s / 65.0s; 62.0-80.0 / 60.0-70.0)" in lines
    assert "udevd and the trigger started before the unit was ready" in lines
    # a boot where udev waited for the unit: the verdict says so, whatever the ratios
    unit[1] = _pair(96, 97, 206, 330, 95)
    assert boot_comparison(boot)["not_held"] is False
    assert "NO: udev was held" in "\n".join(render([], None, boot))
    failed = {"cpus": 16, "no_unit": [{"rc": 1}], "unit": [{"rc": 1}]}
    assert boot_comparison(failed)["not_held"] is None
    assert "no figure" in "\n".join(render([], None, failed))


def test_udev_last_load_from_the_witness() -> None:
    from kmodlab.bench import udev_last_load_s

    text = "\n".join([
        "   (udev-worker)-300 [001] ..... 70.000000: sys_finit_module(fd: 0x5, uargs: 0x0, "
        "flags: 0x0)",
        "   (udev-worker)-300 [001] ..... 71.500000: sys_finit_module -> 0x0",
        "        modprobe-400 [000] ..... 90.000000: sys_finit_module -> 0x0",
    ])
    stats = {"manager": {"UserspaceTimestampMonotonic": "20000000"}}
    assert udev_last_load_s(text, stats) == 51.5
    assert udev_last_load_s("", stats) is None
