"""The kernel command line that records a boot from its first instant (tracer/early.py),
and where it goes: printed for the user, or, asked for with --bootloader, a GRUB drop-in.

The drop-in is a file of its own, /etc/default/grub.d/kmodtrace.cfg, which grub-mkconfig
sources after /etc/default/grub: the user's files are never edited, and uninstall deletes
it. GRUB's script language reads `;` as a command separator, so the kprobe_event= word
is single-quoted there (GRUB passes it to the kernel without the quotes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tracer import btf, early

GRUB_DROPIN = "/etc/default/grub.d/kmodtrace.cfg"
GRUB_DEFAULTS = "/etc/default/grub"
BOOT_DIR = "/boot"

Notice = Callable[[str], None]


class BootLineError(RuntimeError):
    """One line: why the boot-time line cannot be made or placed, and the fix."""


def kernel_btf(kernel: str | None) -> btf.BTF:
    """BTF of KERNEL: None for the running one, a release (its /boot/vmlinuz-RELEASE) or
    the path of a vmlinuz or vmlinux."""
    if kernel is None:
        path = btf.VMLINUX_BTF
        fix = "run on a kernel with CONFIG_DEBUG_INFO_BTF, or name one with --kernel"
    else:
        path = kernel if os.sep in kernel else os.path.join(BOOT_DIR, f"vmlinuz-{kernel}")
        fix = "name an installed kernel release or a vmlinuz path"
    try:
        return btf.load(path)
    except btf.BTFError as e:
        raise BootLineError(f"no BTF for the boot-time probes: {e} (fix: {fix})") from e


def line(kernel: str | None = None, buffer_kb: int = early.BUFFER_KB) -> str:
    try:
        return early.cmdline(kernel_btf(kernel), buffer_kb=buffer_kb)
    except early.EarlyError as e:
        raise BootLineError(f"{e} (fix: install the unit without --bootloader; the trace "
                            "then starts when the tracer attaches)") from e


def grub_quoted(text: str) -> str:
    """The line as a GRUB linux-line argument list: words with `;` single-quoted."""
    return " ".join(f"'{w}'" if ";" in w else w for w in text.split())


def dropin_text(text: str) -> str:
    return ("# Installed by `kmodtrace boot install --bootloader`; `kmodtrace boot uninstall`"
            " removes it.\n# Boot-time tracing of module loading (kmodtrace's early trace)."
            "\nGRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT "
            f"{grub_quoted(text)}\"\n")


def where_to_add() -> str:
    """What to tell a user who did not ask us to edit the boot loader."""
    return ("add these words to the kernel command line (GRUB: append them to "
            f"GRUB_CMDLINE_LINUX_DEFAULT in {GRUB_DEFAULTS}, quoting the kprobe_event= word "
            "in single quotes, then run update-grub; or install again with --bootloader, "
            f"which writes {GRUB_DROPIN} and runs update-grub):")


def _update_grub(notice: Notice) -> None:
    exe = shutil.which("update-grub")
    if exe is None:
        notice("update-grub not found: regenerate the boot loader's configuration yourself")
        return
    p = subprocess.run([exe], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BootLineError(f"update-grub failed: {(p.stderr or p.stdout).strip()} (fix: "
                            f"check {GRUB_DEFAULTS}, or remove {GRUB_DROPIN})")
    notice("ran update-grub: the next boot records from the kernel's first instant")


def _is_live(root: str) -> bool:
    return os.path.realpath(root) == "/"


def install(root: str, text: str, notice: Notice) -> list[str]:
    """Write the GRUB drop-in under ROOT (and run update-grub when ROOT is this system)."""
    base = Path(root)
    if not (base / GRUB_DEFAULTS.lstrip("/")).exists():
        raise BootLineError(f"no {GRUB_DEFAULTS} under {root}: this is not a GRUB system "
                            "(fix: install without --bootloader and add the printed line to "
                            "your boot loader's kernel command line)")
    dropin = base / GRUB_DROPIN.lstrip("/")
    content = dropin_text(text)
    if dropin.is_file() and not dropin.is_symlink() and dropin.read_text() == content:
        return []
    if dropin.is_symlink():
        dropin.unlink()
    dropin.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = dropin.with_name(f".{dropin.name}.tmp")
    tmp.write_text(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dropin)
    if _is_live(root):
        _update_grub(notice)
    return [str(dropin)]


def uninstall(root: str, notice: Notice) -> list[str]:
    dropin = Path(root) / GRUB_DROPIN.lstrip("/")
    if not (dropin.is_file() or dropin.is_symlink()):
        return []
    dropin.unlink()
    if _is_live(root):
        _update_grub(notice)
    return [str(dropin)]


def this_boot_has_it() -> bool:
    try:
        with open("/proc/cmdline") as f:
            return early.in_cmdline(f.read())
    except OSError:
        return False


def installed(root: str) -> bool:
    return (Path(root) / GRUB_DROPIN.lstrip("/")).is_file()
