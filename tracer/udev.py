"""What udev tells us about the device behind each of its module loads.

systemd-udevd loads modules in-process (its builtin kmod calls libkmod, which calls
finit_module()), one device at a time per worker, and no exec marks where one
device ends. After a worker has run the rules and RUN{builtin} of a device, it
broadcasts the device to the udev netlink group (device_monitor_send_device() in
systemd's src/libsystemd/sd-device/device-monitor.c); the BPF program catches that
sendmsg() and copies the first properties. So every load a worker made since its
previous broadcast was made for the device it broadcasts next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Worker process names: "(udev-worker)" since systemd 247, a forked "systemd-udevd"
# before (the main daemon never loads modules itself).
WORKER_COMMS = frozenset({"(udev-worker)", "systemd-udevd"})


@dataclass(frozen=True, slots=True)
class Device:
    devpath: str  # /devices/system/cpu/cpu7
    subsystem: str  # cpu
    action: str  # add, change, bind...
    modalias: str = ""  # what `kmod load $env{MODALIAS}` looked up; "" if unknown


def is_worker(comm: str) -> bool:
    return comm in WORKER_COMMS


def parse_properties(text: str) -> dict[str, str]:
    """KEY=VALUE lines (the BPF side turned the NULs into newlines); a property cut
    off by the capture's end is dropped rather than reported half."""
    props: dict[str, str] = {}
    lines = text.split("\n")
    complete = lines if text.endswith("\n") else lines[:-1]
    for line in complete:
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            props[key] = value
    return props


def device_from_properties(text: str, modalias: str = "") -> Device | None:
    props = parse_properties(text)
    devpath = props.get("DEVPATH")
    if not devpath:
        return None
    return Device(devpath, props.get("SUBSYSTEM", ""), props.get("ACTION", ""),
                  props.get("MODALIAS", modalias))


def read_modalias(devpath: str, sysfs: str = "/sys") -> str:
    """The device's MODALIAS as udev saw it in the uevent; "" if it has none. The
    uevent file, not `modalias`: CPU devices have only the former."""
    try:
        text = Path(sysfs + devpath, "uevent").read_text(errors="surrogateescape")
    except (OSError, ValueError):
        return ""
    for line in text.splitlines():
        if line.startswith("MODALIAS="):
            return line[len("MODALIAS="):]
    return ""
