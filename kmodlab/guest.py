"""Runs inside the test VM: set up, start witness and tracer, run storms, collect.

Started by `kmodtrace vm` as the guest's command. Writes into OUT (a directory
shared with the host): trace.jsonl (the recording), live.out (the live JSON
stories), killed.jsonl (a recording ended by SIGKILL), witness.txt (tracefs),
manifest.json (storm timings), dmesg.txt and the tracers' logs (*.log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kmodlab import storms, vmboot
from kmodlab.witness import Witness
from tracer import boot, kernel


def link_kernel_tree(root: Path) -> None:
    """Make a cached kernel's headers appear where bcc and kbuild look for them."""
    src = root / "usr" / "src"
    if not src.is_dir():
        return
    for d in src.iterdir():
        dest = Path("/usr/src") / d.name
        if not dest.exists():
            dest.symlink_to(d)


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"guest: tracer exited with {proc.returncode} before attaching")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("guest: tracer did not attach in time")
        time.sleep(0.1)


def hide_kernel_headers(release: str) -> bool:
    """Mount an empty directory over /lib/modules/RELEASE/build (through its symlink into
    /usr/src): the tracer must attach as on a machine without linux-headers. True if the
    headers are hidden now."""
    build = Path(f"/lib/modules/{release}/build")
    empty = Path("/tmp/kmt-no-headers")
    empty.mkdir(exist_ok=True)
    if build.exists():
        subprocess.run(["mount", "--bind", str(empty), str(build)], check=True)
    return not (build / "include").exists() and not Path("/sys/kernel/kheaders.tar.xz").exists()


def progress(msg: str) -> None:
    print(f"[guest {time.monotonic():8.1f}s] {msg}", flush=True)


def save_module_stats(dest: Path) -> None:
    """CONFIG_MODULE_STATS counters, where the kernel has them (the oracle)."""
    src = Path("/sys/kernel/debug/modules/stats")
    if src.exists():
        dest.write_text(src.read_text())


SITES_MAXACTIVE = 8


def start_tracer(out: Path, args: list[str], name: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `kmodtrace ARGS` (with ENV added), stdout to OUT/NAME.out, stderr to
    NAME.log; return once attached."""
    ready = out / f"{name}.ready"
    ready.unlink(missing_ok=True)
    with open(out / f"{name}.out", "wb") as stdout, open(out / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", *args, "--ready-file",
                                 str(ready)], stdout=stdout, stderr=log,
                                env=dict(os.environ, **(env or {})))
    wait_for(ready, proc, timeout=600)
    progress(f"tracer attached in {ready.read_text().strip()}s")
    return proc


def _systemctl_show(unit: str | None, props: tuple[str, ...]) -> dict[str, str]:
    cmd = ["systemctl", "show", *([unit] if unit else []), "-p", ",".join(props)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return boot.parse_show(p.stdout)


def _run_to(path: Path, cmd: list[str]) -> int:
    with open(path, "wb") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def _cpu_facts() -> dict[str, Any]:
    flags: list[str] = []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            break
    devices = sorted(p.name for p in Path("/sys/bus/cpu/devices").glob("cpu[0-9]*"))
    modalias = ""
    uevent = Path("/sys/bus/cpu/devices/cpu0/uevent")
    if uevent.exists():
        for line in uevent.read_text().splitlines():
            if line.startswith("MODALIAS="):
                modalias = line.split("=", 1)[1]
    return {"cpus": os.cpu_count(), "cpu_devices": len(devices), "cpu_flags": flags,
            "cpu_modalias": modalias}


def mount_out(out: Path) -> None:
    """Mount the results share (a vng --rwdir) ourselves: virtme-ng-init does not run."""
    args = dict(a.split("=", 1) for a in Path("/proc/cmdline").read_text().split() if "=" in a)
    for key, rel in args.items():
        m = re.fullmatch(r"virtme_initmount(\d+)", key)
        if m and "/" + rel.strip("/") == str(out):
            fstype = args.get(f"{key}_fstype", "9p")
            opts = ["-o", "trans=virtio,version=9p2000.L,access=any"] if fstype == "9p" else []
            subprocess.run(["mount", "-t", fstype, *opts, f"virtme.initmount{m[1]}", str(out)],
                           check=True)
            return
    raise SystemExit(f"guest: no share for {out} on the kernel command line")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        return f"(cannot read: {e.strerror})"


def boot_collect(out: Path, unit: bool, timeout: float = 2400) -> int:
    """Runs once systemd has started the system (vm --boot): wait for the unit, collect.

    With the unit: wait until kmodtrace-boot.service has stopped by itself (boot
    settled, ExecStopPost moved the trace to /var/log/kmodtrace); without: until udev
    settles. Then OUT gets the trace, `kmodtrace boot show [--json]`, the kernel's
    boot-time trace (witness.txt), systemd's timestamps (bootstats.json), the unit as
    installed, the journal and dmesg.
    """
    deadline = time.monotonic() + timeout
    # the unit this boot's command line chose: holding mode, or beside udev
    name = boot.unit_for_cmdline(Path("/proc/cmdline").read_text())
    progress(f"systemd runs the system; {'waiting for ' + name if unit else 'no unit'}")
    while time.monotonic() < deadline:
        state = subprocess.run(["systemctl", "is-system-running"], capture_output=True,
                               text=True, check=False).stdout.strip()
        k = _systemctl_show(name, ("ActiveState", "ExecMainExitTimestampMonotonic"))
        stopped = (k.get("ActiveState") in ("inactive", "failed")
                   and k.get("ExecMainExitTimestampMonotonic", "0") not in ("", "0"))
        if state not in ("initializing", "starting") and (stopped or not unit):
            break
        time.sleep(2)
    else:
        progress(f"{name} did not stop within {timeout:.0f}s")
    if not unit:
        subprocess.run(["udevadm", "settle", "--timeout=600"], check=False)
    try:  # freeze the kernel's record before our own reads add to it
        Path("/sys/kernel/tracing/tracing_on").write_text("0")
        shutil.copyfile("/sys/kernel/tracing/trace", out / "witness.txt")
    except OSError as e:
        progress(f"no boot-time trace: {e}")
    stats: dict[str, Any] = {
        "unit_installed": unit,
        "system_state": subprocess.run(["systemctl", "is-system-running"], capture_output=True,
                                       text=True, check=False).stdout.strip(),
        "units": {u: _systemctl_show(u, vmboot.UNIT_PROPS) for u in vmboot.UNITS},
        "manager": _systemctl_show(None, vmboot.MANAGER_PROPS),
        "analyze": subprocess.run(["systemd-analyze", "time"], capture_output=True, text=True,
                                  check=False).stdout.strip(),
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "kernel": platform.release(),
        "kprobe_events": _read("/sys/kernel/tracing/kprobe_events"),
        "modules": sorted(line.split()[0] for line in _read("/proc/modules").splitlines()),
    } | _cpu_facts()
    stats["unit_ran"] = name if unit else None
    for n in boot.UNIT_NAMES:
        unit_file, link = Path(boot.UNIT_DIR) / n, Path(
            boot.UNIT_DIR) / f"{boot.WANTED_BY}.wants" / n
        if unit_file.exists():
            shutil.copyfile(unit_file, out / n)
        stats.setdefault("unit_links", {})[n] = os.readlink(link) if link.is_symlink() else None
    stats["unit_link"] = stats["unit_links"][name]
    traces = boot.boot_traces()
    stats["traces"] = [str(t) for t in traces]
    for t in traces:
        shutil.copyfile(t, out / t.name)
    if traces:
        shutil.copyfile(traces[0], out / "boot.jsonl")
        kmodtrace = [sys.executable, "-m", "tracer"]
        stats["boot_show_rc"] = _run_to(out / "boot-show.txt", [*kmodtrace, "boot", "show"])
        with open(out / "boot-show.json", "wb") as f:
            stats["boot_show_json_rc"] = subprocess.run(
                [*kmodtrace, "boot", "show", "--json"], stdout=f, check=False).returncode
        _run_to(out / "boot-status.txt", [*kmodtrace, "boot", "status"])
    (out / "bootstats.json").write_text(json.dumps(stats, indent=1))
    _run_to(out / "unit-journal.txt", ["journalctl", "-b", "-u", name,
                                       "-o", "short-monotonic", "--no-pager"])
    _run_to(out / "journal.txt", ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"])
    _run_to(out / "dmesg.txt", ["dmesg"])
    progress(f"collected {len(traces)} boot trace(s) into {out}")
    rc = 0 if traces or not unit else 1
    (out / "collect.rc").write_text(f"{rc}\n")
    return rc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--kernel-root", type=Path)
    ap.add_argument("--scenarios", default="default", help="default, or a JSON list")
    ap.add_argument("--command", help="run this shell command instead of the storms")
    ap.add_argument("--boot-collect", action="store_true",
                    help="systemd booted the guest (vm --boot): wait for the boot trace, collect")
    ap.add_argument("--mount-out", action="store_true",
                    help="mount the results share first, power off at the end (vm --boot)")
    ap.add_argument("--no-unit", action="store_true", help="with --boot-collect: a boot "
                    "without kmodtrace-boot.service (the baseline)")
    ap.add_argument("--hide-headers", action="store_true",
                    help="trace with the kernel headers hidden (after kmodstorm is built)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.boot_collect:
        if args.mount_out:
            mount_out(out)
        try:
            return boot_collect(out, unit=not args.no_unit)
        finally:
            if args.mount_out:  # started by systemd.run=: nobody else ends the VM
                subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)
    if args.kernel_root:
        link_kernel_tree(args.kernel_root)
    release = platform.release()
    if args.scenarios in ("default", "oracle"):
        scenarios = (storms.default_scenarios() if args.scenarios == "default"
                     else storms.oracle_scenarios())
    else:
        scenarios = [storms.Scenario(**d) for d in json.loads(args.scenarios)]
    kmodstorm = None
    if not args.command and any(s.generator in ("kthread", "finit", "late-announce")
                                   for s in scenarios):
        progress("building kmodstorm against this kernel's headers")
        kmodstorm = storms.build_kmodstorm(release, args.cache / "kmodstorm")
    manifest: dict[str, Any] = {"kernel": release, "scenarios": []}
    if args.hide_headers:
        manifest["headers_hidden"] = hide_kernel_headers(release)
        # which kmod throttle this kernel has (tracer/kernel.py throttle_form), for the tests
        manifest["kmod_wq"] = "kmod_wq" in kernel.kallsyms_lookup(["kmod_wq"])
        progress(f"kernel headers hidden: {manifest['headers_hidden']}")
    save_module_stats(out / "stats-before.txt")
    tfs = kernel.tracefs()
    witness = Witness(tfs) if tfs else None
    if witness:
        witness.start()
    progress("starting tracer (bcc compiles the probes)")
    # `live --json` both prints the judged stories (live.out) and records the trace, so
    # the host can check that its offline report reaches the same verdicts.
    tracer = start_tracer(out, ["live", "--json", "-o", str(out / "trace.jsonl")], "live")
    if args.command:
        t0 = time.monotonic_ns()
        rc = subprocess.run(args.command, shell=True, check=False).returncode
        manifest["command"] = {"cmd": args.command, "rc": rc, "start_ns": t0,
                               "end_ns": time.monotonic_ns()}
    for sc in scenarios if not args.command else []:
        progress(f"storm {sc.name}: {sc.count} x {sc.generator} {sc.target}")
        storms.run(sc, kmodstorm)
        manifest["scenarios"].append(asdict(sc))
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=120)
    manifest["tracer_rc"] = tracer.returncode
    save_module_stats(out / "stats-after.txt")
    if args.scenarios == "default" and not args.command and kmodstorm is not None:
        # A recording killed with SIGKILL mid-way must keep every event written so far.
        progress("killed recording: a storm, then kill -9")
        tracer = start_tracer(out, ["record", "-o", str(out / "killed.jsonl")], "killed")
        sc = storms.Scenario("killed", "kthread", "kmt-killed-storm", 20)
        storms.run(sc, kmodstorm)
        tracer.kill()
        tracer.wait()
        manifest["killed"] = asdict(sc)
        # Returns seen at their call site: 8 kretprobe instances for 20 requests that all
        # get a slot and return modprobe's status 2 s later, long after the site's kprobe.
        # The same recorder hooks the module syscalls by their tracepoints, as on a
        # kernel without BPF trampolines: a few finit_module and init_module calls.
        progress("return sites: a storm beyond 8 kretprobe instances; syscall tracepoints")
        tracer = start_tracer(out, ["record", "-o", str(out / "sites.jsonl")], "sites",
                              env={"KMODTRACE_MAXACTIVE": str(SITES_MAXACTIVE),
                                   "KMODTRACE_TRAMPOLINES": "0"})
        sc = storms.Scenario("sites", "kthread", "kmt-site-none", 20, modprobe_delay=2.0,
                             modprobe_exit=1)
        storms.run(sc, kmodstorm)
        tracepoints = [storms.Scenario("tp-finit", "finit", "kmodstorm_fail", 3, copies=True),
                       storms.Scenario("tp-init", "init-efault", "65536", 2)]
        for tp in tracepoints:
            storms.run(tp, kmodstorm)
        manifest["tracepoints"] = [asdict(tp) for tp in tracepoints]
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=120)
        manifest["sites"] = asdict(sc) | {"tracer_rc": tracer.returncode,
                                          "maxactive": SITES_MAXACTIVE}
    if witness:
        (out / "witness.txt").write_text(witness.stop())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    (out / "dmesg.txt").write_text(dmesg)
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
