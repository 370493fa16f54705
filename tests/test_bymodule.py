"""Rows per module joined from requests and loads, and udev's device properties."""

from __future__ import annotations

from pathlib import Path

from tracer import bymodule, udev
from tracer.record import read_trace
from tracer.session import replay

DATA = Path(__file__).parent / "data"


def _rows(name: str) -> dict[str, bymodule.ModuleRow]:
    trace = read_trace(str(DATA / name / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile)
    return bymodule.join(rep.requests, rep.loads)


def test_requests_join_the_modules_their_modprobes_loaded() -> None:
    rows = _rows("vm-6.1")
    # 8 concurrent mount -t minix: 8 fs-minix requests, one row for minix
    minix = rows["minix"]
    assert minix.requests == 8
    assert dict(minix.aliases) == {"fs-minix": 8}
    assert minix.ok == 1
    # converged waiters are counted in ok or failures, as they returned
    assert minix.attempts == minix.ok + sum(minix.failures.values())
    assert minix.wasted_bytes > 0 and minix.span_ns > 0
    assert "fs-minix" not in rows  # the request string is not a row of its own
    # socket(AF_APPLETALK) loads appletalk and its dependencies for net-pf-5
    assert set(rows["psnap"].aliases) == {"net-pf-5"}
    assert rows["appletalk"].aliases["net-pf-5"] == 8


def test_loads_nobody_requested_have_no_alias() -> None:
    xfs = _rows("vm-6.1")["xfs"]  # 8 concurrent modprobe xfs, as udev would
    assert xfs.requests == 0 and not xfs.aliases
    assert xfs.attempts == 8 and xfs.failures["EEXIST"] == 7


def test_busy_time_merges_overlapping_loads() -> None:
    trace = read_trace(str(DATA / "vm-6.1" / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile)
    loads = [ld for ld, _ in rep.loads]
    busy = bymodule.busy_ns(loads)
    total = sum(ld.duration_ns or 0 for ld in loads)
    first = min(ld.start_ns for ld in loads)
    last = max(ld.end_ns or 0 for ld in loads)
    assert 0 < busy <= last - first
    assert busy < total  # the storms overlap


def test_table_puts_repeated_modules_first_within_100_columns() -> None:
    from tracer.report import table_lines

    rows = _rows("vm-6.1")
    table = bymodule.table_rows(rows)
    tries = bymodule.COLUMNS.index("TRIES")
    repeated = [r for r in table if int(r[tries]) > 1]
    assert table[: len(repeated)] == repeated
    lines = table_lines(bymodule.COLUMNS, table, 100)
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].split()[:7] == list(bymodule.COLUMNS[:7])
    # a request string that led to no module keeps its own row, with no attempts
    assert rows["kmt-no-such-module"].attempts == 0 and rows["kmt-no-such-module"].requests == 5


def test_udev_properties_as_the_bpf_side_sends_them() -> None:
    text = "ACTION=add\nDEVPATH=/devices/system/cpu/cpu7\nSUBSYSTEM=cpu\nMODALIAS=cpu:ty"
    dev = udev.device_from_properties(text, modalias="cpu:type:x86,ven0000:feature:,0001")
    assert dev == udev.Device("/devices/system/cpu/cpu7", "cpu", "add",
                              "cpu:type:x86,ven0000:feature:,0001")
    assert udev.device_from_properties("ACTION=add\nSUBSYSTEM=cpu\n") is None
    assert udev.parse_properties("A=1\nDEVPATH=/x\n") == {"A": "1", "DEVPATH": "/x"}


def test_boot_view_fits_100_columns_and_answers_at_a_glance() -> None:
    from tracer import report, reportdata

    trace, rep = report.load(str(DATA / "vm-6.1" / "trace.jsonl"))
    judged = reportdata.build(trace, rep)
    lines = report.render_boot(judged)
    assert all(len(line) <= 100 for line in lines), [ln for ln in lines if len(ln) > 100]
    text = "\n".join(lines)
    rows = bymodule.join(rep.requests, rep.loads)
    repeated = sum(1 for r in rows.values() if r.repeated)
    assert f"{repeated} modules tried more than once" in text
    doc = report.document(judged)
    assert doc["loading"]["attempts"] == sum(r.attempts for r in rows.values())
    assert doc["by_module"]["minix"]["aliases"] == {"fs-minix": 8}
    assert 0 < doc["loading"]["busy_ns"] < doc["loading"]["traced_to_ns"]


def test_recorded_udev_coldplug_ties_every_worker_load_to_its_device() -> None:
    """A real 6.1 VM trace of `udevadm trigger --action=add`: each (udev-worker) load
    names the cpu or ACPI processor device it was for, with the MODALIAS sysfs gave it,
    and the kernel's own witness saw the same load attempts."""
    from kmodlab.witness import parse

    base = DATA / "vm-6.1-udev"
    trace = read_trace(str(base / "trace.jsonl"))
    rep = replay(trace.events, trace.features.profile, modaliases=trace.modaliases)
    udev_loads = [ld for ld, _ in rep.loads if udev.is_worker(ld.comm)]
    assert udev_loads and all(ld.device is not None for ld in udev_loads)
    witness = [w for w in parse((base / "witness.txt").read_text())
               if w.event == "sys_exit_finit_module" and w.comm == "(udev-worker)"]
    assert sorted((w.tid, w.ret) for w in witness) == sorted(
        (ld.tid, ld.ret) for ld in udev_loads)
    for ld in udev_loads:
        assert ld.device is not None
        if ld.device.subsystem == "cpu":
            assert ld.device.devpath.startswith("/devices/system/cpu/cpu")
        else:  # this recorder read `modalias`, which CPU devices lack; ACPI ones have it
            assert ld.device.subsystem == "acpi" and ld.device.modalias.startswith("acpi:")
    rows = bymodule.join(rep.requests, rep.loads)
    acpi_cpufreq = rows["acpi_cpufreq"]
    # one attempt per processor device (2 vCPUs: cpu0, cpu1 and their ACPI twins)
    assert acpi_cpufreq.attempts == sum(acpi_cpufreq.devices.values()) == 4
    assert set(acpi_cpufreq.subsystems) == {"cpu", "acpi"}


def test_modalias_is_read_from_the_uevent_file() -> None:
    # this machine's own CPU: its uevent carries MODALIAS; there is no `modalias` file
    cpu0 = Path("/sys/devices/system/cpu/cpu0")
    assert (cpu0 / "uevent").exists()
    assert udev.read_modalias("/devices/system/cpu/cpu0").startswith("cpu:type:x86,")
    assert udev.read_modalias("/devices/no/such/device") == ""
