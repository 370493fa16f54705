"""kmodtrace-boot.service and kmodtrace-boot-beside.service: units systemd accepts, the first
ordered before udev, the second (boot-time tracing on the command line) beside it, installed
and removed cleanly on a scratch root; which one the next boot uses; the settle logic that
ends a boot recording; finding a boot."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tracer import boot, early

UNIT_REL = "etc/systemd/system/kmodtrace-boot.service"
LINK_REL = "etc/systemd/system/sysinit.target.wants/kmodtrace-boot.service"
BESIDE_REL = "etc/systemd/system/kmodtrace-boot-beside.service"
BESIDE_LINK_REL = "etc/systemd/system/sysinit.target.wants/kmodtrace-boot-beside.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> list[str]:
    return [w for v in unit[section].get(key, []) for w in v.split()]


def exe() -> list[str]:
    """A real executable: systemd-analyze verify checks that ExecStart's binary exists."""
    argv = boot.default_exe()
    assert os.access(argv[0], os.X_OK), argv
    return argv


# --- systemd accepts the unit ---------------------------------------------------------------


def analyze_verify(unit_dir: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify both units and sysinit.target with unit_dir first in the unit
    path.

    Verifying sysinit.target with the enable links in unit_dir builds the boot transaction
    that contains our units, so ordering cycles show up too. Returns the exit status and the
    output lines about our units.
    """
    sa = shutil.which("systemd-analyze")
    if sa is None:
        pytest.fail("systemd-analyze is missing: install Debian's `systemd` package "
                    "(apt-get install -y systemd)")
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_LEVEL="notice")
    p = subprocess.run([sa, "verify", "--man=no", *(str(unit_dir / n) for n in boot.UNIT_NAMES),
                        "sysinit.target"], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "kmodtrace" in ln]
    return p.returncode, lines


def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    boot.install(root=str(tmp_path), exe=exe(), run_systemctl=False)
    rc, complaints = analyze_verify(tmp_path / "etc/systemd/system")
    assert rc == 0 and complaints == [], complaints


@pytest.mark.parametrize("breakage", ["missing-exe", "cycle", "bad-specifier",
                                      "beside-missing-exe", "beside-bad-condition"])
def test_verify_harness_catches_broken_units(tmp_path: Path, breakage: str) -> None:
    """The check above is not vacuous: the same harness rejects broken variants, of either
    unit."""
    boot.install(root=str(tmp_path), exe=exe(), run_systemctl=False)
    unit = tmp_path / (BESIDE_REL if breakage.startswith("beside-") else UNIT_REL)
    text = unit.read_text()
    if breakage.endswith("missing-exe"):
        text = text.replace(f"ExecStart={exe()[0]}", "ExecStart=/nonexistent/kmodtrace")
    elif breakage == "cycle":  # we are Before=sysinit.target
        text = text.replace("[Service]", "After=sysinit.target\n\n[Service]")
    elif breakage == "beside-bad-condition":
        text = text.replace("ConditionKernelCommandLine=", "ConditionKernelCommandLin=")
    else:
        text = text.replace("boot-%b", "boot-%Q")
    unit.write_text(text)
    rc, complaints = analyze_verify(tmp_path / "etc/systemd/system")
    assert rc != 0 or complaints, f"{breakage} went unnoticed"


# --- what the unit says -----------------------------------------------------------------------


HELD = ("systemd-udevd.service", "systemd-udev-trigger.service",
        "systemd-modules-load.service", "sysinit.target")


@pytest.mark.parametrize("mode", [boot.HOLD, boot.BESIDE])
def test_ordering_and_readiness_directives(mode: str) -> None:
    u = parse_unit(boot.unit_text(exe(), mode=mode))
    assert u["Unit"]["DefaultDependencies"] == ["no"]
    before = words(u, "Unit", "Before")
    # holding mode: what loads modules waits for READY=1; beside mode: nothing waits
    for dep in HELD:
        assert (dep in before) == (mode == boot.HOLD), dep
    assert "shutdown.target" in before
    # the kernel command line picks exactly one of the two at each boot
    assert u["Unit"]["ConditionKernelCommandLine"] == [
        ("!" if mode == boot.HOLD else "") + early.MARKER]
    for mount in ("sys-kernel-tracing.mount", "sys-kernel-debug.mount"):
        assert mount in words(u, "Unit", "After") and mount in words(u, "Unit", "Wants")
    assert "shutdown.target" in words(u, "Unit", "Conflicts")
    svc = u["Service"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    timeout = int(svc["TimeoutStartSec"][0])
    # holding: a broken tracer cannot hold the boot long; beside: it holds nothing, and
    # Python at nice 19 in a busy boot needs more than a minute to start
    assert 0 < timeout <= 120 if mode == boot.HOLD else timeout == boot.BESIDE_START_TIMEOUT_S
    assert u["Install"]["WantedBy"] == ["sysinit.target"]
    # Anything that needs /var or a mount namespace would order us after udev: a cycle.
    for hazard in ("LogsDirectory", "StateDirectory", "RequiresMountsFor", "ProtectSystem",
                   "PrivateTmp", "ProtectHome", "ProtectKernelModules", "ProtectKernelTunables"):
        assert hazard not in svc and hazard not in u["Unit"], hazard
    caps = words(u, "Service", "CapabilityBoundingSet")
    assert {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"} <= set(caps)
    assert ("CAP_SYS_NICE" in caps) == (mode == boot.BESIDE)


def test_beside_unit_compiles_at_low_priority_and_records_at_normal() -> None:
    """Beside mode: nice 19 while Python starts and bcc compiles (not CPUWeight=, which
    would turn on the cgroup cpu controller for every service of the boot), nice 0 for
    every thread once READY=1 (ExecStartPost= runs after it; a failure to renice does not
    fail the unit). The holding unit keeps the default priority: udev waits for it."""
    argv = exe()
    u = parse_unit(boot.unit_text(argv, mode=boot.BESIDE))
    svc = u["Service"]
    assert svc["Nice"] == [str(boot.COMPILE_NICE)] and boot.COMPILE_NICE == 19
    assert "CPUWeight" not in svc and "StartupCPUWeight" not in svc
    assert svc["ExecStartPost"] == ["-/bin/sh -c 'renice -n 0 -g \"$$MAINPID\"'"]
    # the same recorder, the same trace file and its move as the holding unit
    held = parse_unit(boot.unit_text(argv))["Service"]
    for key in ("Type", "ExecStart", "ExecStopPost", "RuntimeDirectory"):
        assert svc[key] == held[key], key
    assert "Nice" not in held and "ExecStartPost" not in held


def test_renice_of_the_process_group_reaches_every_thread(tmp_path: Path) -> None:
    """What ExecStartPost= runs, on a process of many threads in a group of its own: each
    thread goes from nice 19 to 0 (renice -p would change the main thread alone)."""
    if os.geteuid() != 0:
        pytest.skip("raising a priority needs CAP_SYS_NICE")
    code = ("import os, threading, time\n"
            "os.nice(19)\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), "
            "daemon=True).start()\n"
            "print(flush=True)\n"
            "time.sleep(60)\n")
    import sys
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"\n"
        tasks = Path(f"/proc/{proc.pid}/task")

        def nices() -> list[int]:
            return [int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
                    for t in tasks.iterdir()]

        assert nices() == [19] * 4
        cmd = shlex.split(parse_unit(boot.unit_text(exe(), mode=boot.BESIDE))["Service"][
            "ExecStartPost"][0].removeprefix("-"))
        cmd[-1] = cmd[-1].replace("$$", "$")  # systemd's unescaping of "$$"
        p = subprocess.run(cmd, env=dict(os.environ, MAINPID=str(proc.pid)),
                           capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
        assert "new priority 0" in p.stdout
        assert nices() == [0] * 4
    finally:
        proc.kill()
        proc.wait()


def test_exec_start_records_to_run_until_settled() -> None:
    argv = exe()
    u = parse_unit(boot.unit_text(argv, settle_s=7, max_s=123))
    cmd = shlex.split(u["Service"]["ExecStart"][0])
    assert cmd[:len(argv)] == argv
    assert cmd[len(argv):] == ["record", "--output=/run/kmodtrace/boot-%b.jsonl",
                               "--until-settled=7", "--duration=123"]
    assert u["Service"]["RuntimeDirectory"] == ["kmodtrace"]


def test_exec_start_is_understood_by_the_record_command() -> None:
    """The recorder takes every option the unit passes (none falls through as COMMAND)."""
    from tracer.cli import main

    argv = exe()
    cmd = shlex.split(parse_unit(boot.unit_text(argv))["Service"]["ExecStart"][0])
    record = main.commands["record"]
    ctx = record.make_context("record", cmd[len(argv) + 1:])
    assert ctx.params["command"] == ()
    assert ctx.params["output"] == "/run/kmodtrace/boot-%b.jsonl"
    assert ctx.params["until_settled"] == boot.SETTLE_S
    assert ctx.params["duration"] == boot.MAX_S


def test_not_installed_package_runs_with_pythonpath(tmp_path: Path) -> None:
    u = parse_unit(boot.unit_text(["/usr/bin/python3", "-m", "tracer"]))
    env = u["Service"]["Environment"][0].strip('"')
    assert env == f"PYTHONPATH={Path(boot.__file__).resolve().parent.parent}"
    assert "Environment" not in parse_unit(boot.unit_text("/usr/bin/kmodtrace"))["Service"]


def test_exe_with_odd_characters_is_quoted() -> None:
    u = parse_unit(boot.unit_text("/opt/my tools/100%/kmodtrace"))
    assert u["Service"]["ExecStart"][0].startswith('"/opt/my tools/100%%/kmodtrace" record ')
    with pytest.raises(ValueError, match="absolute"):
        boot.unit_text("kmodtrace")


def test_exec_stop_post_moves_the_trace(tmp_path: Path) -> None:
    u = parse_unit(boot.unit_text(exe()))
    script = boot.collect_script(boot.run_file(), boot.LOG_DIR)
    assert u["Service"]["ExecStopPost"] == [f"/bin/sh -c '{script}'"]
    # The same script on scratch paths.
    src, log = tmp_path / "run" / "boot-abc.jsonl", tmp_path / "log" / "kmodtrace"
    src.parent.mkdir()
    run = boot.collect_script(str(src), str(log))
    p = subprocess.run(["/bin/sh", "-c", run], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and not log.exists(), p.stderr  # nothing recorded: no-op
    src.write_text('{"type":"header"}\n')
    p = subprocess.run(["/bin/sh", "-c", run], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert not src.exists() and (log / src.name).read_text() == '{"type":"header"}\n'
    assert stat.S_IMODE(log.stat().st_mode) == 0o700


# --- install / uninstall ----------------------------------------------------------------------


def listing(root: Path) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out.append((rel, "-> " + os.readlink(p)))
            elif p.is_dir():
                out.append((rel, f"dir {stat.S_IMODE(p.stat().st_mode):o}"))
            else:
                out.append((rel, p.read_text()))
    return sorted(out)


@pytest.fixture
def no_systemctl(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError(f"ran a command on a scratch root: {a}")
    monkeypatch.setattr(subprocess, "run", forbidden)


@pytest.mark.usefixtures("no_systemctl")
@pytest.mark.parametrize("populated", [False, True])
def test_install_uninstall_round_trip(tmp_path: Path, populated: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    if populated:
        (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
        (root / "etc/systemd/system/foo.service").write_text("[Service]\nExecStart=/bin/true\n")
        (root / "etc/hostname").write_text("box\n")
        logs = root / "var/log/kmodtrace"
        logs.mkdir(parents=True)
        (logs / "boot-0123456789abcdef0123456789abcdef.jsonl").write_text("{}\n")
    before = listing(root)
    argv = exe()

    changed = boot.install(root=str(root), exe=argv)
    for rel in (UNIT_REL, LINK_REL, BESIDE_REL, BESIDE_LINK_REL):
        assert str(root / rel) in changed, rel
    assert (root / UNIT_REL).read_text() == boot.unit_text(argv)
    assert (root / BESIDE_REL).read_text() == boot.unit_text(argv, mode=boot.BESIDE)
    assert stat.S_IMODE((root / UNIT_REL).stat().st_mode) == 0o644
    assert stat.S_IMODE((root / BESIDE_REL).stat().st_mode) == 0o644
    assert os.readlink(root / LINK_REL) == "/etc/systemd/system/kmodtrace-boot.service"
    assert os.readlink(root / BESIDE_LINK_REL) == \
        "/etc/systemd/system/kmodtrace-boot-beside.service"
    assert boot.install(root=str(root), exe=argv) == []
    st = boot.status(root=str(root), exe=argv)
    assert st["installed"] and st["enabled"] and st["current"] and st["warnings"] == []
    assert all(u["installed"] and u["enabled"] and u["current"] for u in st["units"].values())
    assert sorted(st["units"]) == sorted(boot.UNIT_NAMES)
    assert st["mode"] == boot.HOLD and st["mode_cost"] == boot.MODE_COST[boot.HOLD]
    assert st["systemd"] is None
    assert len(st["traces"]) == (1 if populated else 0)

    notes: list[str] = []
    removed = boot.uninstall(root=str(root), notice=notes.append)
    for rel in (UNIT_REL, LINK_REL, BESIDE_REL, BESIDE_LINK_REL):
        assert str(root / rel) in removed, rel
    assert listing(root) == before  # traces kept, nothing of ours left
    if populated:
        assert any("kept 1 recorded boot trace" in n for n in notes), notes
    assert boot.uninstall(root=str(root)) == []
    assert not boot.status(root=str(root))["installed"]


@pytest.mark.usefixtures("no_systemctl")
def test_uninstall_removes_a_lone_unit_of_either_mode(tmp_path: Path) -> None:
    """A root where only one unit is left (an older kmodtrace installed the holding one
    alone): status says it is incomplete, uninstall removes what there is."""
    argv = exe()
    boot.install(root=str(tmp_path), exe=argv)
    for rel in (BESIDE_REL, BESIDE_LINK_REL):
        (tmp_path / rel).unlink()
    st = boot.status(root=str(tmp_path), exe=argv)
    assert not st["installed"] and st["units"][boot.UNIT_NAME]["installed"]
    assert any(f"{boot.BESIDE_UNIT} is missing" in w for w in st["warnings"]), st["warnings"]
    assert sorted(boot.uninstall(root=str(tmp_path))) == sorted(
        str(tmp_path / r) for r in (UNIT_REL, LINK_REL, "etc/systemd/system/sysinit.target.wants",
                                    "etc/systemd/system", "etc/systemd", "etc"))


def test_next_mode_follows_the_command_line(tmp_path: Path) -> None:
    """The next boot is beside udev where its command line will have the words: the GRUB
    drop-in of `boot install --bootloader`, else this boot's own line; else it holds."""
    from tracer import bootline

    line = f"trace_event=module_load kprobe_event=p:kmt/x,foo {early.MARKER}"
    assert boot.next_mode(str(tmp_path), "ro quiet")[0] == boot.HOLD
    mode, why = boot.next_mode(str(tmp_path), f"ro {line}")
    assert mode == boot.BESIDE and "this boot's kernel command line" in why
    old = "trace_event=module_load kprobe_event=p:kmt/x,foo"  # an older line: no marker
    mode, why = boot.next_mode(str(tmp_path), f"ro {old}")
    assert mode == boot.HOLD and early.MARKER in why and "boot cmdline" in why
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text("")
    bootline.install(str(tmp_path), line, lambda m: None)
    mode, why = boot.next_mode(str(tmp_path), "ro quiet")
    assert mode == boot.BESIDE and bootline.GRUB_DROPIN in why
    bootline.install(str(tmp_path), old, lambda m: None)
    mode, why = boot.next_mode(str(tmp_path), f"ro {line}")
    assert mode == boot.HOLD and "--bootloader" in why
    assert "udev" in boot.how_to_avoid_holding() and "boot cmdline" in boot.how_to_avoid_holding()


@pytest.mark.usefixtures("no_systemctl")
def test_install_repairs_a_stale_unit_and_link(tmp_path: Path) -> None:
    argv = exe()
    boot.install(root=str(tmp_path), exe=argv)
    (tmp_path / UNIT_REL).write_text("[Service]\nExecStart=/old/kmodtrace\n")
    (tmp_path / LINK_REL).unlink()
    (tmp_path / LINK_REL).symlink_to("/somewhere/else.service")
    st = boot.status(root=str(tmp_path), exe=argv)
    assert st["installed"] and not st["current"] and not st["enabled"]
    assert any("differs" in w for w in st["warnings"])
    assert sorted(boot.install(root=str(tmp_path), exe=argv)) == sorted(
        [str(tmp_path / UNIT_REL), str(tmp_path / LINK_REL)])
    st = boot.status(root=str(tmp_path), exe=argv)
    assert st["current"] and st["enabled"]


@pytest.mark.usefixtures("no_systemctl")
def test_install_without_enable_and_foreign_file(tmp_path: Path) -> None:
    argv = exe()
    boot.install(root=str(tmp_path), exe=argv, enable=False)
    assert (tmp_path / UNIT_REL).is_file() and not (tmp_path / LINK_REL).parent.exists()
    assert not boot.status(root=str(tmp_path), exe=argv)["enabled"]
    (tmp_path / LINK_REL).parent.mkdir()
    (tmp_path / LINK_REL).write_text("not a link")
    with pytest.raises(boot.BootError, match="not a symlink"):
        boot.install(root=str(tmp_path), exe=argv)


def test_parse_show() -> None:
    out = "ActiveState=inactive\nResult=success\nExecMainStatus=0\n\nbogus line\n"
    assert boot.parse_show(out) == {"ActiveState": "inactive", "Result": "success",
                                    "ExecMainStatus": "0"}


# --- SettleWatcher ------------------------------------------------------------------------------


class Fake:
    def __init__(self) -> None:
        self.t = 100.0
        self.queue = True
        self.booted = True
        self.boot_checks = 0
        self.udev = True

    def clock(self) -> float:
        return self.t

    def queue_exists(self) -> bool:
        return self.queue

    def boot_done(self) -> bool:
        self.boot_checks += 1
        return self.booted

    def watcher(self, idle_s: float = 5, max_s: float = 60) -> boot.SettleWatcher:
        return boot.SettleWatcher(idle_s, max_s, clock=self.clock,
                                  queue_exists=self.queue_exists, boot_done=self.boot_done,
                                  udev_up=lambda: self.udev)


def run_until(f: Fake, w: boot.SettleWatcher, step: float, until: float) -> float | None:
    """Poll every step seconds until t reaches until; the elapsed time of the first True."""
    start = w.start
    while f.t <= until:
        if w.poll():
            return f.t - start
        f.t += step
    return None


def test_not_settled_while_udev_has_a_queue() -> None:
    f = Fake()
    w = f.watcher(idle_s=5, max_s=60)
    assert run_until(f, w, 0.5, f.t + 50) is None and w.reason is None


def test_settled_after_idle_s_without_a_queue() -> None:
    f = Fake()
    w = f.watcher(idle_s=5, max_s=60)
    f.t += 10
    assert not w.poll()
    f.queue = False  # at t0+10 the queue empties
    assert run_until(f, w, 0.5, f.t + 20) == pytest.approx(15)
    assert w.reason == "settled" and w.poll()  # latched


def test_a_new_queue_restarts_the_idle_time() -> None:
    f = Fake()
    w = f.watcher(idle_s=5, max_s=60)
    f.queue = False
    assert run_until(f, w, 1, f.t + 4) is None  # 4 s quiet
    f.queue = True  # a late device
    assert not w.poll()
    f.queue = False
    assert run_until(f, w, 1, f.t + 30) == pytest.approx(5 + 5)


def test_forced_after_max_s() -> None:
    f = Fake()
    w = f.watcher(idle_s=5, max_s=30)
    assert run_until(f, w, 0.25, f.t + 100) == pytest.approx(30)
    assert w.reason == "max-duration"


def test_no_queue_before_udev_runs_is_not_settled() -> None:
    """Early boot: udev has not started (no queue file) and systemd is still starting."""
    f = Fake()
    f.queue, f.booted = False, False
    w = f.watcher(idle_s=5, max_s=120)
    assert run_until(f, w, 0.1, f.t + 40) is None
    assert f.boot_checks <= 41  # asked at most once a second, not on every poll
    f.booted = True
    assert run_until(f, w, 0.1, f.t + 20) == pytest.approx(40 + 1 + 5, abs=0.3)


# --- finding a boot -------------------------------------------------------------------------------

IDS = ["aaaa1111" + "0" * 24, "aaaa2222" + "0" * 24, "bbbb3333" + "0" * 24]


def make_boots(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, bid in enumerate(IDS):  # IDS[2] is the newest
        p = d / f"boot-{bid}.jsonl"
        p.write_text("x" * (i + 1))
        os.utime(p, (1_000_000 + i * 100, 1_000_000 + i * 100))
        paths.append(p)
    (d / "notes.txt").write_text("not a trace")
    return paths


def test_find_boot_trace_newest_and_relative(tmp_path: Path) -> None:
    old, mid, new = make_boots(tmp_path)
    assert boot.find_boot_trace(tmp_path, None, run_dir=None) == new
    assert boot.find_boot_trace(tmp_path, "0", run_dir=None) == new
    assert boot.find_boot_trace(tmp_path, "-1", run_dir=None) == mid
    assert boot.find_boot_trace(tmp_path, "-2", run_dir=None) == old
    with pytest.raises(ValueError, match=r"only 3 boot trace\(s\)"):
        boot.find_boot_trace(tmp_path, "-3", run_dir=None)


def test_find_boot_trace_by_id(tmp_path: Path) -> None:
    old, mid, new = make_boots(tmp_path)
    assert boot.find_boot_trace(tmp_path, IDS[1], run_dir=None) == mid
    assert boot.find_boot_trace(tmp_path, "aaaa1", run_dir=None) == old
    assert boot.find_boot_trace(tmp_path, "BBBB", run_dir=None) == new
    uuid = f"{IDS[0][:8]}-{IDS[0][8:12]}-{IDS[0][12:16]}-{IDS[0][16:20]}-{IDS[0][20:]}"
    assert boot.find_boot_trace(tmp_path, uuid, run_dir=None) == old  # /proc's form
    with pytest.raises(ValueError, match="ambiguous") as e:
        boot.find_boot_trace(tmp_path, "aaaa", run_dir=None)
    assert IDS[0] in str(e.value) and IDS[1] in str(e.value)
    with pytest.raises(ValueError, match="no boot trace for boot 'cccc'"):
        boot.find_boot_trace(tmp_path, "cccc", run_dir=None)
    with pytest.raises(ValueError, match="not a boot id"):
        boot.find_boot_trace(tmp_path, "../etc", run_dir=None)


def test_find_boot_trace_empty_and_pending(tmp_path: Path) -> None:
    log, run = tmp_path / "log", tmp_path / "run"
    with pytest.raises(ValueError, match="no boot traces"):
        boot.find_boot_trace(log, None, run_dir=run)
    make_boots(log)
    run.mkdir()
    pending = run / "boot-cccc4444.jsonl"  # this boot, still recording
    pending.write_text("y")
    assert boot.find_boot_trace(log, None, run_dir=run) == pending
    moved_copy = run / f"boot-{IDS[0]}.jsonl"  # same boot in both: the log copy counts
    moved_copy.write_text("z")
    assert boot.find_boot_trace(log, IDS[0], run_dir=run) == log / f"boot-{IDS[0]}.jsonl"
    assert len(boot.boot_traces(log, run)) == 4


@pytest.mark.usefixtures("no_systemctl")
def test_status_lists_boots_newest_first(tmp_path: Path) -> None:
    logs = tmp_path / "var/log/kmodtrace"
    make_boots(logs)
    st = boot.status(root=str(tmp_path), exe=exe())
    assert not st["installed"] and not st["enabled"]
    assert [t["boot"] for t in st["traces"]] == IDS[::-1]
    assert [t["size"] for t in st["traces"]] == [3, 2, 1]
    assert st["traces"][0]["mtime"] == 1_000_200 and not st["traces"][0]["pending"]


def test_not_settled_until_udevd_has_started() -> None:
    """No systemd (a virtme guest): boot_done() is True at once, and before udevd runs
    there is no queue file. The recording must wait for udevd to appear."""
    f = Fake()
    f.queue, f.udev = False, False
    w = f.watcher(idle_s=3, max_s=60)
    assert run_until(f, w, 0.5, f.t + 20) is None  # 20 s without udevd: still recording
    f.udev = True
    assert run_until(f, w, 0.5, f.t + 10) is not None
    assert w.reason == "settled"


# --- a root unit runs only what root alone can change -------------------------------------


def _script(path: Path, text: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _refused(argv: list[str], *needles: str) -> str:
    with pytest.raises(boot.BootError) as e:
        boot.check_trusted(argv)
    msg = str(e.value)
    assert msg.startswith("refusing to install: the boot ") and "fix: chown root" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_trusted_command_installs(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sbin" / "kmodtrace")
    boot.check_trusted([str(exe)])
    assert str(tmp_path / "root" / UNIT_REL) in boot.install(
        root=str(tmp_path / "root"), exe=str(exe), run_systemctl=False)


def test_world_writable_command_is_refused_and_nothing_written(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sbin" / "kmodtrace", mode=0o777)
    _refused([str(exe)], f"the boot command {exe} is not root's alone: {exe} is writable by "
             "group and others (mode 777)")
    with pytest.raises(boot.BootError):
        boot.install(root=str(tmp_path / "root"), exe=str(exe), run_systemctl=False)
    assert not (tmp_path / "root").exists()


def test_writable_parent_directory_is_refused(tmp_path: Path) -> None:
    exe = _script(tmp_path / "opt" / "bin" / "kmodtrace")
    (tmp_path / "opt").chmod(0o757)
    _refused([str(exe)], f"{tmp_path / 'opt'} is writable by others (mode 757)")


def test_sticky_root_directory_above_is_allowed(tmp_path: Path) -> None:
    """Like /tmp: others may create entries there but not replace root's."""
    shared = tmp_path / "shared"
    exe = _script(shared / "own" / "kmodtrace")
    shared.chmod(0o1777)
    boot.check_trusted([str(exe)])
    shared.chmod(0o777)  # the same without the sticky bit
    _refused([str(exe)], f"{shared} is writable by group and others")


def test_command_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sbin" / "kmodtrace")
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    os.chown(exe, 65534, 65534)
    _refused([str(exe)], f"{exe} is owned by uid 65534, not root")


def test_symlinked_command_is_checked_where_it_points(tmp_path: Path) -> None:
    target = _script(tmp_path / "drop" / "kmodtrace")
    (tmp_path / "drop").chmod(0o777)
    link = tmp_path / "sbin" / "kmodtrace"
    link.parent.mkdir()
    link.symlink_to(target)
    _refused([str(link)], f"the boot command {link}", f"{tmp_path / 'drop'} is writable")


def test_console_script_python_and_venv_are_checked(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    real_python = _script(tmp_path / "pythons" / "python3.11")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(real_python)
    cfg = venv / "pyvenv.cfg"
    cfg.write_text("home = /usr/bin\n")
    exe = _script(venv / "bin" / "kmodtrace", f"#!{venv / 'bin' / 'python3'}\nimport x\n")
    boot.check_trusted([str(exe)])

    (tmp_path / "pythons").chmod(0o775)  # the Python the venv links to
    _refused([str(exe)], f"the boot Python {venv / 'bin' / 'python3'}",
             f"{tmp_path / 'pythons'} is writable by its group")
    (tmp_path / "pythons").chmod(0o755)
    cfg.chmod(0o666)
    _refused([str(exe)], f"the boot venv {cfg}", f"{cfg} is writable by group and others")
    cfg.chmod(0o644)
    boot.check_trusted([str(venv / "bin" / "python3"), "-m", "tracer"])
