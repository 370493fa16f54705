"""Runs inside the test VM: set up, start witness and tracer, run storms, collect.

Started by `kmodtrace vm` as the guest's command. Writes into OUT (a directory
shared with the host): trace.jsonl (the recording), live.out (the live JSON
stories), killed.jsonl (a recording ended by SIGKILL), witness.txt (tracefs),
manifest.json (storm timings), dmesg.txt and the tracers' logs (*.log).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kmodlab import storms
from kmodlab.witness import Witness
from tracer import kernel


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


def progress(msg: str) -> None:
    print(f"[guest {time.monotonic():8.1f}s] {msg}", flush=True)


def save_module_stats(dest: Path) -> None:
    """CONFIG_MODULE_STATS counters, where the kernel has them (the oracle)."""
    src = Path("/sys/kernel/debug/modules/stats")
    if src.exists():
        dest.write_text(src.read_text())


def start_tracer(out: Path, args: list[str], name: str) -> subprocess.Popen[bytes]:
    """Start `kmodtrace ARGS`, stdout to OUT/NAME.out, stderr to NAME.log; return once attached."""
    ready = out / f"{name}.ready"
    ready.unlink(missing_ok=True)
    with open(out / f"{name}.out", "wb") as stdout, open(out / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", *args, "--ready-file",
                                 str(ready)], stdout=stdout, stderr=log)
    wait_for(ready, proc, timeout=600)
    progress(f"tracer attached in {ready.read_text().strip()}s")
    return proc


def boot_wait(out: Path, timeout: float = 900) -> int:
    """Wait for the recorder the init wrapper started to write its trailer."""
    trace = out / "boot.jsonl"
    deadline = time.monotonic() + timeout
    progress("boot recorder running; waiting for boot to settle")
    while time.monotonic() < deadline:
        if trace.exists() and b'"type":"trailer"' in trace.read_bytes()[-4096:]:
            break
        time.sleep(0.5)
    else:
        progress("boot recorder did not finish in time")
        return 1
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    (out / "dmesg.txt").write_text(dmesg)
    progress("boot trace complete")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--kernel-root", type=Path)
    ap.add_argument("--scenarios", default="default", help="default, or a JSON list")
    ap.add_argument("--command", help="run this shell command instead of the storms")
    ap.add_argument("--boot-wait", action="store_true",
                    help="the boot recorder runs already (vm --boot): wait for it to finish")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.boot_wait:
        return boot_wait(out)
    if args.kernel_root:
        link_kernel_tree(args.kernel_root)
    release = platform.release()
    if args.scenarios in ("default", "oracle"):
        scenarios = (storms.default_scenarios() if args.scenarios == "default"
                     else storms.oracle_scenarios())
    else:
        scenarios = [storms.Scenario(**d) for d in json.loads(args.scenarios)]
    kmodstorm = None
    if not args.command and any(s.generator == "kthread" for s in scenarios):
        progress("building kmodstorm against this kernel's headers")
        kmodstorm = storms.build_kmodstorm(release, args.cache / "kmodstorm")
    save_module_stats(out / "stats-before.txt")
    tfs = kernel.tracefs()
    witness = Witness(tfs) if tfs else None
    if witness:
        witness.start()
    progress("starting tracer (bcc compiles the probes)")
    manifest: dict[str, Any] = {"kernel": release, "scenarios": []}
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
    if witness:
        (out / "witness.txt").write_text(witness.stop())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    (out / "dmesg.txt").write_text(dmesg)
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
