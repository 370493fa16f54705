"""`kmodtrace vm --boot`: a real systemd boot of the test VM with kmodtrace-boot.service.

systemd is PID 1 (virtme-ng's --systemd; the guest's root is the host's, read-only), and
the unit is enabled the way it is on a user's machine: `kmodtrace boot install --root`
writes it and its sysinit.target.wants link into a private copy of the host's
/etc/systemd/system, and vng runs in a private mount namespace (unshare) where that copy is
bind-mounted over /etc/systemd/system. QEMU's 9p server resolves the guest's paths in that
namespace, so the guest's systemd finds the unit at /etc/systemd/system at its first
unit load, while the host's /etc is never written. `--no-unit` boots the same copy with
the unit uninstalled: the baseline for the delay the unit adds.

The kernel records the same boot on its own (the witness): boot-time tracing on the
kernel command line enables the module and (f)init_module syscall events in the global
tracefs buffer from the first instant, on the clock bpf_ktime_get_ns uses.

How the results come back: `systemd.run=` on the kernel command line (systemd's
run-generator, nothing written to the guest's unit directories) starts a transient
service, `systemd-run --no-block ... kmodlab.guest --boot-collect`. It mounts the results
share, waits until the unit has stopped by itself (boot settled, ExecStopPost moved the trace
to /var/log/kmodtrace), copies the trace, `kmodtrace boot show [--json]`, the witness,
systemd's timestamps and the installed unit file into OUT, and powers the VM off. Why not
virtme-ng's own way (its init as the serial console's getty, running --exec): the host's
root holds /.dockerenv, so the guest's systemd believes it runs in a Docker container and
its getty generator never starts serial-getty@ttyS0; that getty is masked here so the
collector runs once. With systemd.run= the boot's default target is the command's (after
sysinit.target and basic.target, the part of boot the unit traces); multi-user.target's
services are not started. The container guess also makes PID 1 skip loading autofs4/ipv6
itself and skip a few ConditionVirtualization=!container units; none loads a module the
test looks at.

/var in the guest is virtme-ng-init's overlay (a tmpfs over the read-only host /var), set
up when the console starts, before boot has finished and so at least the unit's settle
time (10 s) before ExecStopPost moves the trace there.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodlab import vm
from kmodlab.witness import EVENTS
from tracer import boot

HOST_UNIT_DIR = Path(boot.UNIT_DIR)
WITNESS_BUF_KB = 2048  # per CPU; a 16-vCPU boot records a few thousand events
UNITS = (*boot.UNIT_NAMES, "systemd-udevd.service", "systemd-udev-trigger.service",
         "systemd-modules-load.service", "sysinit.target")
UNIT_PROPS = ("ActiveState", "Result", "ExecMainPID", "ExecMainStatus", "InvocationID",
              "ConditionResult",
              "InactiveExitTimestampMonotonic", "ExecMainStartTimestampMonotonic",
              "ActiveEnterTimestampMonotonic", "ExecMainExitTimestampMonotonic",
              "InactiveEnterTimestampMonotonic", "TimeoutStartUSec")
MANAGER_PROPS = ("KernelTimestampMonotonic", "InitRDTimestampMonotonic",
                 "UserspaceTimestampMonotonic", "FinishTimestampMonotonic")


def witness_append(buf_kb: int = WITNESS_BUF_KB) -> list[str]:
    """Kernel command line: the witness events in the global buffer from the first instant."""
    events = ",".join(e.replace("/", ":") for e in EVENTS)
    return [f"trace_event={events}", f"trace_buf_size={buf_kb}K", "trace_clock=mono"]


def collector_command(out: Path, unit: bool) -> list[str]:
    """The guest's collector, as a transient service that does not hold up boot."""
    guest = [sys.executable, "-m", "kmodlab.guest", "--out", str(out), "--cache",
             str(vm.cache_dir()), "--boot-collect", "--mount-out"] + ([] if unit else ["--no-unit"])
    return ["systemd-run", "--no-block", "--unit=kmodlab-collect",
            "--property=StandardOutput=journal+console", *guest]


# The collector's command, as a script in the guest's root (the namespace's overlay): the
# kernel command line holds 2048 bytes; virtme-ng's words take about 1000 of them and the
# boot-time tracing words about 950.
COLLECT_PATH = "/etc/kmt-vmboot"


def collect_script(out: Path, unit: bool) -> str:
    words = collector_command(out, unit)
    if any(re.search(r"[\s\"'\\]", w) for w in words):
        raise vm.VMError(f"paths with quotes or blanks cannot go in the collector's command: "
                         f"{words}")
    return f"#!/bin/sh\nexec {' '.join(words)}\n"


def boot_append(early_line: str | None) -> list[str]:
    """The kernel command line we add: the witness, and the collector (see above).

    EARLY_LINE: the words `kmodtrace boot cmdline --buffer-kb WITNESS_BUF_KB` prints (the
    unit's boot: what a user adds to the boot loader, with a buffer that keeps the whole
    boot for the witness), which also give the witness its events. None: the witness's
    events alone (the boot without the unit)."""
    tracing = early_line.split() if early_line else witness_append()
    return [*(shlex.quote(w) for w in tracing),  # vng shlex-splits each --append
            f"systemd.run={COLLECT_PATH}",
            "systemd.run_success_action=none", "systemd.run_failure_action=poweroff",
            "systemd.mask=serial-getty@ttyS0.service"]


def early_line(kern: vm.KernelImage) -> str:
    """What `kmodtrace boot cmdline --kernel VMLINUZ --buffer-kb WITNESS_BUF_KB` prints for
    the guest's kernel."""
    p = subprocess.run([*kmodtrace_cli(), "boot", "cmdline", "--kernel", str(kern.vmlinuz),
                        "--buffer-kb", str(WITNESS_BUF_KB)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise vm.VMError(f"kmodtrace boot cmdline failed: {(p.stderr or p.stdout).strip()}")
    return p.stdout.strip()


def kmodtrace_cli() -> list[str]:
    """The user's `kmodtrace` command: the console script next to this Python."""
    return boot.default_exe()


def prepare_unit_dir(unit: bool, progress: vm.Progress, base: Path | None = None) -> Path:
    """A private copy of the host's /etc/systemd/system with the unit installed (or not).

    Install and uninstall are the user's commands, `kmodtrace boot install|uninstall
    --root COPY`, so the guest gets exactly what a user's machine gets.
    """
    base = base or vm.cache_dir() / "vmboot" / ("unit" if unit else "no-unit")
    shutil.rmtree(base, ignore_errors=True)
    etc = base / HOST_UNIT_DIR.relative_to("/")
    if HOST_UNIT_DIR.is_dir():
        shutil.copytree(HOST_UNIT_DIR, etc, symlinks=True)
    else:
        etc.mkdir(parents=True)
    action = "install" if unit else "uninstall"
    progress(f"kmodtrace boot {action} --root {base}")
    p = subprocess.run([*kmodtrace_cli(), "boot", action, "--root", str(base)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise vm.VMError(f"kmodtrace boot {action} failed: {(p.stderr or p.stdout).strip()}")
    return etc


# The guest's /etc/fstab (vng binds virtme-ng's systemd.fstab over it; its default is
# /dev/null): a writable /var/log, where the unit's ExecStopPost moves the trace.
GUEST_FSTAB = "tmpfs /var/log tmpfs mode=0755,nosuid,nodev 0 0\n"
GUEST_FSTAB_PATH = "/etc/kmodtrace-vmboot.fstab"
VNG_CONF = {"systemd": {"masks": ["getty@"], "fstab": GUEST_FSTAB_PATH}}

# udev kills a worker whose event outlasts event_timeout (180 s by default) and then
# broadcasts the device itself, so the loads that worker made name no device (it never
# broadcast). Under emulation on a busy 2-core host the 16-vCPU per-CPU storm took longer
# (every CPU device's worker killed, once the tracer compiled beside udev); on hardware
# it takes seconds. The guest's udev.conf (in the overlay) waits this long.
UDEV_EVENT_TIMEOUT_S = 900

NAMESPACE_SCRIPT = r"""set -e
tmp=$1 units=$2 conf=$3 fstab=$4 collect=$5 modload=$6 modprobe=$7; shift 7
mount -t tmpfs kmodtrace-vmboot "$tmp"
mkdir "$tmp/upper" "$tmp/work" "$tmp/root"
mknod "$tmp/upper/.dockerenv" c 0 0
mount -t overlay overlay -o "lowerdir=/,upperdir=$tmp/upper,workdir=$tmp/work" "$tmp/root"
for d in /dev /proc /sys; do mount --rbind "$d" "$tmp/root$d"; done
mount --bind "$units" "$tmp/root/etc/systemd/system"
mkdir -p "$tmp/root$HOME/.config/virtme-ng"
cp "$conf" "$tmp/root$HOME/.config/virtme-ng/virtme-ng.conf"
cp "$fstab" "$tmp/root/etc/kmodtrace-vmboot.fstab"
cp "$collect" "$tmp/root@COLLECT@"
chmod 0755 "$tmp/root@COLLECT@"
printf '\nevent_timeout=@UDEV_TIMEOUT@\n' >> "$tmp/root/etc/udev/udev.conf"
if [ -s "$modload" ]; then
  mkdir -p "$tmp/root/etc/modules-load.d"
  cp "$modload" "$tmp/root/etc/modules-load.d/kmodtrace-advice.conf"
fi
if [ -s "$modprobe" ]; then
  cp "$modprobe" "$tmp/root/etc/modprobe.d/kmodtrace-advice.conf"
fi
while [ "$1" != -- ]; do mount --bind "$1" "$tmp/root$1"; shift; done
shift
exec chroot "$tmp/root" "$@"
""".replace("@COLLECT@", COLLECT_PATH).replace("@UDEV_TIMEOUT@", str(UDEV_EVENT_TIMEOUT_S))


def namespace_prefix(unit_dir: Path, shared: list[Path], tmp: Path,
                     collect: str = "#!/bin/sh\n", modules_load: str = "",
                     modprobe_conf: str = "") -> list[str]:
    """Run the rest where the guest's root (the host's /) has unit_dir as /etc/systemd/system.

    A private mount namespace (unshare) and, in it, a root that is an overlay of the host's
    / (with the unit copy bound over /etc/systemd/system, and /.dockerenv whited out: the
    host is a Docker container, and a guest systemd that sees that file thinks it is one
    too and then ignores the kernel command line). vng and QEMU run chrooted there, so
    QEMU's 9p export of / is that root; the SHARED directories (the results, the cache)
    are bound through, so what the guest writes there reaches the host. vng there reads
    a virtme-ng.conf of ours whose systemd.fstab gives the guest a tmpfs /var/log, and
    the collector's script COLLECT at COLLECT_PATH; MODULES_LOAD, if not empty, is
    /etc/modules-load.d/kmodtrace-advice.conf there (a previous boot's preload advice),
    MODPROBE_CONF /etc/modprobe.d/kmodtrace-advice.conf (its blacklist advice).
    Nothing outside the namespace changes; the overlay's upper layer is a tmpfs on TMP.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    conf, fstab = tmp.parent / "virtme-ng.conf", tmp.parent / "fstab"
    script, modload = tmp.parent / "collect", tmp.parent / "modules-load.conf"
    modprobe = tmp.parent / "modprobe.conf"
    conf.write_text(json.dumps(VNG_CONF) + "\n")
    fstab.write_text(GUEST_FSTAB)
    script.write_text(collect)
    modload.write_text(modules_load)
    modprobe.write_text(modprobe_conf)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            NAMESPACE_SCRIPT, "kmodtrace-vmboot", str(tmp), str(unit_dir), str(conf),
            str(fstab), str(script), str(modload), str(modprobe), *[str(d) for d in shared],
            "--"]


@dataclass(frozen=True, slots=True)
class Applied:
    """A previous boot's advice (tracer/advice.py), applied to the next boot: the modules
    to blacklist in modprobe.d, and those to preload from modules-load.d,
    with systemd-modules-load.service ordered before udev's coldplug trigger (systemd
    does not order them), so that udev's lookups find them live."""

    blacklist: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    source: str = ""  # the trace the advice came from

    def modprobe_conf(self) -> str:
        """/etc/modprobe.d/kmodtrace-advice.conf: libkmod's blacklist, read by udev's kmod
        builtin and modprobe alike, as `modprobe.blacklist=` is. Not on the command line:
        the lab's guest line (virtme-ng's words and the early trace's) has too little room
        left below 2047 bytes, and a longer one panics the kernel at its first instant."""
        if not self.blacklist:
            return ""
        return (f"# kmodtrace: blacklisted on the advice of {self.source}\n"
                + "".join(f"blacklist {m}\n" for m in self.blacklist))

    def modules_load(self) -> str:
        """/etc/modules-load.d/kmodtrace-advice.conf; "" when nothing is preloaded."""
        if not self.preload:
            return ""
        return (f"# kmodtrace: preloaded on the advice of {self.source}\n"
                + "".join(f"{m}\n" for m in self.preload))


ORDER_DROPIN = "systemd-modules-load.service.d/kmodtrace-advice.conf"
ORDER_TEXT = ("# kmodtrace: the preloaded modules are live before udev's coldplug looks them "
              "up\n[Unit]\nBefore=systemd-udev-trigger.service\n"
              "# software emulation loads a module in tens of seconds: the unit's 90 s\n"
              "# would stop it halfway through the list\n[Service]\nTimeoutSec=20min\n")


def advice_from(trace: str, progress: vm.Progress) -> Applied:
    """The blacklist and preload advice of the boot traced in TRACE (its kernel's
    modules.alias read from /lib/modules, which the guest shares)."""
    from tracer import advice, reportdata

    a = advice.build(reportdata.read(trace))
    applied = Applied(tuple(a.targets("blacklist")), tuple(a.targets("preload")), trace)
    if not a.alias_found:
        progress(f"{a.modules_alias} is not there: udev's lookups not resolved")
    progress(f"advice of {trace}: blacklist {' '.join(applied.blacklist) or 'nothing'}; "
             f"preload {' '.join(applied.preload) or 'nothing'}")
    return applied


def apply_to_units(applied: Applied, unit_dir: Path) -> None:
    """The ordering drop-in, in the guest's /etc/systemd/system copy."""
    if applied.preload:
        dropin = unit_dir / ORDER_DROPIN
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(ORDER_TEXT)


def _usec(props: dict[str, str], key: str) -> int | None:
    v = props.get(key, "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """The measured figures, from the guest's systemd timestamps (CLOCK_MONOTONIC, usec).

    unit_name: the unit that ran (holding or beside mode: the kernel command line chose);
    ready_s: its main process started -> READY=1 (ActiveEnter of a Type=notify unit);
    udevd_s / trigger_s: systemd-udevd and the coldplug trigger started, seconds after
    systemd (PID 1) started (UserspaceTimestamp), so boots of different kernel start-up
    times compare; *_kernel_s: the same since the kernel started; ready_before_udevd /
    udev_started_before_ready: the unit held udev, or udev and its trigger started while
    the unit was still compiling.
    """
    units = stats.get("units", {})
    mgr = stats.get("manager", {})
    userspace = _usec(mgr, "UserspaceTimestampMonotonic") or 0
    out: dict[str, Any] = {"unit": stats.get("unit_installed", False)}
    ran = [n for n in boot.UNIT_NAMES
           if _usec(units.get(n, {}), "ExecMainStartTimestampMonotonic") is not None]
    if ran:
        out["unit_name"] = ran[0]
    k = units.get(ran[0] if ran else boot.UNIT_NAME, {})
    start, ready = _usec(k, "ExecMainStartTimestampMonotonic"), _usec(
        k, "ActiveEnterTimestampMonotonic")
    if start is not None and ready is not None:
        out["ready_s"] = (ready - start) / 1e6
        out["unit_start_s"] = (start - userspace) / 1e6
    for key, name in (("udevd", "systemd-udevd.service"),
                      ("trigger", "systemd-udev-trigger.service")):
        t = _usec(units.get(name, {}), "ExecMainStartTimestampMonotonic")
        if t is not None:
            out[f"{key}_s"] = (t - userspace) / 1e6
            out[f"{key}_kernel_s"] = t / 1e6
    finish = _usec(mgr, "FinishTimestampMonotonic")
    if finish is not None:
        out["boot_finished_s"] = (finish - userspace) / 1e6
    udevd = _usec(units.get("systemd-udevd.service", {}), "ExecMainStartTimestampMonotonic")
    trigger = _usec(units.get("systemd-udev-trigger.service", {}),
                    "ExecMainStartTimestampMonotonic")
    if ready is not None and udevd is not None:
        out["ready_before_udevd"] = ready <= udevd
        if trigger is not None:
            out["udev_started_before_ready"] = udevd < ready and trigger < ready
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if "ready_s" in summary:
        lines.append(f"{summary.get('unit_name', boot.UNIT_NAME)}: start -> READY "
                     f"{summary['ready_s']:.1f}s (started {summary['unit_start_s']:.1f}s "
                     "after systemd)")
    for key, what in (("udevd", "systemd-udevd"), ("trigger", "udev coldplug trigger")):
        if f"{key}_s" in summary:
            lines.append(f"{what} started {summary[f'{key}_s']:.1f}s after systemd "
                         f"({summary[f'{key}_kernel_s']:.1f}s after the kernel)")
    if "boot_finished_s" in summary:
        lines.append(f"boot finished {summary['boot_finished_s']:.1f}s after systemd")
    return lines


def run_boot(kern: vm.KernelImage, out: Path, progress: vm.Progress, cpus: int = 2,
             memory: str = "2G", kvm: bool | None = None, unit: bool = True,
             timeout: float = 2400, applied: Applied | None = None) -> int:
    """Boot systemd with (or without) the installed unit on CPUS vCPUs; results in OUT.
    APPLIED: a previous boot's advice, applied to this one."""
    if kern.root is not None:
        # Not headers (the unit's tracer builds from BTF): systemd-udevd loads modules
        # from /lib/modules/RELEASE as the boot starts, before the lab could link a
        # cached kernel's tree in (link_kernel_tree() runs in the guest's own command).
        raise vm.VMError(f"--boot needs a kernel installed on the system, not {kern.release} "
                         "from the lab's cache: udev loads its modules from /lib/modules at "
                         "boot (fix: use -k stable, or install linux-image-"
                         f"{kern.release})")
    out.mkdir(parents=True, exist_ok=True)
    # a directory of this boot's own: another session's boot must not replace its units
    work = Path(tempfile.mkdtemp(prefix="vmboot-", dir=vm.cache_dir()))
    try:
        return _run_boot(kern, out, progress, work, cpus, memory, kvm, unit, timeout, applied)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_boot(kern: vm.KernelImage, out: Path, progress: vm.Progress, work: Path, cpus: int,
              memory: str, kvm: bool | None, unit: bool, timeout: float,
              applied: Applied | None) -> int:
    unit_dir = prepare_unit_dir(unit, progress, base=work / "unit")
    applied = applied or Applied()
    apply_to_units(applied, unit_dir)
    progress(f"booting systemd as PID 1 {'with' if unit else 'without'} {boot.UNIT_NAME} "
             f"(console log: {out / 'console.log'})")
    for stale in ("bootstats.json", "collect.rc"):
        (out / stale).unlink(missing_ok=True)
    # vng's --exec never runs (its getty is masked, see above): vng's own exit status says
    # nothing, the collector's (collect.rc) does
    line = early_line(kern) if unit else None
    vm.run_guest(kern, out, ["--boot-collect"], progress, cpus=cpus, memory=memory, kvm=kvm,
                 timeout=timeout, append=boot_append(line), systemd=True,
                 qemu_opts=["-cpu", "max"],
                 prefix=namespace_prefix(unit_dir, [out, vm.cache_dir()],
                                         work / "ns",
                                         collect_script(out, unit), applied.modules_load(),
                                         applied.modprobe_conf()),
                 console=out / "console.log", exec_command=[COLLECT_PATH])
    stats_path, rc_path = out / "bootstats.json", out / "collect.rc"
    if not stats_path.exists() or not rc_path.exists():
        progress(f"the guest's collector did not finish: see {out / 'console.log'}")
        return 1
    stats = json.loads(stats_path.read_text())
    stats["summary"] = summarize(stats)
    stats_path.write_text(json.dumps(stats, indent=1))
    for line in summary_lines(stats["summary"]):
        progress(line)
    return int(rc_path.read_text())

