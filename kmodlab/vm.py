"""Host side of the test VM: pick and fetch a kernel, decide on KVM, boot virtme-ng.

Kernels are stock Debian ones. "stable" is the one linux-image-amd64 names on this
system (installed with apt if missing); "backports" (bookworm-backports) and
"trixie-backports" are fetched with apt into a cache, using a private sources list and
state directory per suite, so the system's apt configuration is never changed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kmodlab import programs
from tracer import record

Progress = Callable[[str], None]


class VMError(RuntimeError):
    """A one-line reason the VM cannot be run."""


def cache_dir() -> Path:
    base = os.environ.get("KMODTRACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kmodtrace")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True, slots=True)
class KernelImage:
    release: str
    vmlinuz: Path
    root: Path | None  # extracted packages for a cached kernel; None for the system's


# The fix named when apt fails (the lab's apt runs are installs and private fetches).
APT_FIX = "check the network and the Debian mirror in /etc/apt, and run as root"


def run_step(cmd: list[str], progress: Progress | None, what: str, *, fix: str = "",
             cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run one step of the lab; its stdout, or VMError naming the step, its last words
    and the fix: never a CalledProcessError traceback."""
    if progress is not None:
        progress(what)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    except OSError as e:
        raise not_run(cmd, what, e) from e
    return step_output(p, what, fix)


def not_run(cmd: list[str], what: str, e: OSError) -> VMError:
    """The one-line error for a step whose program could not be started."""
    if isinstance(e, FileNotFoundError):
        return VMError(f"{what}: {cmd[0]} is not installed (vm/bootstrap.sh installs what "
                       "the lab runs: kmodlab/programs.tsv)")
    return VMError(f"{what}: cannot run {cmd[0]}: {e.strerror}")


def step_output(p: subprocess.CompletedProcess[str], what: str, fix: str = "") -> str:
    """The stdout of a finished step, or VMError naming it, its last words and the fix."""
    if p.returncode != 0:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:]) or "no output"
        raise VMError(f"{what} failed (exit {p.returncode}): {tail}"
                      + (f" (fix: {fix})" if fix else ""))
    return p.stdout


def missing_packages(packages: list[str]) -> list[str]:
    """Those of PACKAGES dpkg does not report installed (all of them without dpkg)."""
    missing = []
    for pkg in packages:
        try:
            status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                                    capture_output=True, text=True, check=False).stdout
        except OSError:
            status = ""
        if status != "install ok installed":
            missing.append(pkg)
    return missing


def apt_install(packages: list[str], progress: Progress, what: str,
                recommends: bool = False) -> None:
    """apt-get install PACKAGES; VMError (one line, with the fix) if apt fails."""
    run_step(["apt-get", "install", "-y", *([] if recommends else ["--no-install-recommends"]),
              *packages], progress, what, fix=APT_FIX)


def apt_opts(base: Path) -> list[str]:
    """apt options for a private state under BASE (sources.list, lists, cache, archives):
    the system's apt configuration is neither read for sources nor changed."""
    return [f"-oDir::Etc::SourceList={base / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={base / 'lists'}", f"-oDir::Cache={base / 'cache'}",
            f"-oDir::Cache::archives={base / 'archives'}"]


def private_apt_dir(suite: str) -> Path:
    """Where the private apt state of SUITE lives in the cache."""
    return cache_dir() / "apt" / suite


def _depends_release(pkg_info: str) -> str | None:
    m = re.search(r"linux-image-(\S+?)(?:\s|,|$)", pkg_info.split("Depends:", 1)[-1])
    return m[1] if m else None


def stable_kernel(progress: Progress) -> KernelImage:
    """The kernel linux-image-amd64 names, installed (with its headers) if missing."""
    need = programs.packages("kernel")  # linux-image-amd64, linux-headers-amd64
    if missing_packages(need):
        apt_install(need, progress, "installing Debian's stable kernel and headers with apt")
    info = run_step(["dpkg-query", "-s", "linux-image-amd64"], progress,
                    "reading linux-image-amd64")
    release = _depends_release(info)
    if release is None:
        raise VMError("cannot tell which kernel linux-image-amd64 depends on")
    vmlinuz = Path(f"/boot/vmlinuz-{release}")
    if not vmlinuz.exists() or not Path(f"/lib/modules/{release}/build").exists():
        apt_install([f"linux-image-{release}", f"linux-headers-{release}"], progress,
                    f"installing linux-image-{release} and headers", recommends=True)
    return KernelImage(release, vmlinuz, None)


def _system_debian_uri() -> str:
    """The Debian mirror this system already uses, so we add no host of our own."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file() and p.suffix in ("", ".list", ".sources"):
            texts.append(p.read_text(errors="replace"))
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if m[1].rstrip("/").endswith("/debian"):
                return m[1]
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m[1]
    raise VMError("no Debian mirror found in /etc/apt: cannot fetch a backports kernel")


# -k names of the suites fetched through a private apt state, and the suite each means.
SUITES = {"backports": "bookworm-backports", "trixie-backports": "trixie-backports"}


def _split_layout(image_info: str, release: str) -> bool:
    """Whether linux-image-RELEASE is the metapackage of Debian's 7.x layout (it depends
    on linux-binary-RELEASE: vmlinuz in /usr/lib/modules/RELEASE, the xz modules in
    linux-modules-RELEASE) rather than the package holding /boot/vmlinuz-RELEASE."""
    return f"linux-binary-{release}" in image_info.split("Depends:", 1)[-1].split("\n", 1)[0]


def backports_kernel(progress: Progress, suite: str = "bookworm-backports") -> KernelImage:
    """The newest linux-image-amd64 of SUITE, extracted into the cache: with its headers
    in the old layout (one linux-image package, /boot/vmlinuz-RELEASE); without them in
    the 7.x layout (linux-binary + linux-modules, the kernel in
    usr/lib/modules/RELEASE/vmlinuz, where virtme-ng finds its modules beside it): that
    kernel has BTF, so the tracer needs no headers."""
    base = private_apt_dir(suite)
    lists = base / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (base / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                       f"{_system_debian_uri()} {suite} main\n")
    opts = apt_opts(base)
    run_step(["apt-get", *opts, "update"], progress,
             f"reading {suite} package lists (private apt)", fix=APT_FIX)
    info = run_step(["apt-cache", *opts, "show", f"linux-image-amd64/{suite}"], progress,
                    f"finding the kernel of {suite}", fix=APT_FIX)
    release = _depends_release(info.split("\n\n")[0])
    if release is None:
        raise VMError(f"no linux-image-amd64 in {suite}")
    root = cache_dir() / "kernels" / release
    for vmlinuz, moddir in ((root / "boot" / f"vmlinuz-{release}", root / "lib" / "modules"),
                            (root / "usr" / "lib" / "modules" / release / "vmlinuz",
                             root / "usr" / "lib" / "modules")):
        if vmlinuz.exists() and (moddir / release / "modules.dep").exists():
            return KernelImage(release, vmlinuz, root)
    image = run_step(["apt-cache", *opts, "show", f"linux-image-{release}/{suite}"], progress,
                     f"reading linux-image-{release}", fix=APT_FIX)
    split = _split_layout(image.split("\n\n")[0], release)
    if split:
        pkgs = {f"linux-binary-{release}", f"linux-modules-{release}"}
        vmlinuz, modbase = root / "usr" / "lib" / "modules" / release / "vmlinuz", "usr"
    else:
        hdr = run_step(["apt-cache", *opts, "depends", f"linux-headers-{release}"], progress,
                       "resolving header packages", fix=APT_FIX)
        pkgs = {f"linux-image-{release}", f"linux-headers-{release}"}
        pkgs |= set(re.findall(r"Depends: (linux-(?:headers|kbuild)-\S+)", hdr))
        vmlinuz, modbase = root / "boot" / f"vmlinuz-{release}", ""
    dl = base / "debs"
    dl.mkdir(exist_ok=True)
    run_step(["apt-get", *opts, "download", *sorted(pkgs)], progress,
             f"downloading {', '.join(sorted(pkgs))}", cwd=dl, fix=APT_FIX)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    version = release.split("-")[0]
    for deb in sorted(dl.glob(f"*{version}*.deb")):
        if split and not deb.name.startswith(tuple(pkgs)):
            continue  # an old-layout download of the same version in the same cache
        run_step(["dpkg-deb", "-x", str(deb), str(tmp)], progress, f"unpacking {deb.name}")
    run_step(["depmod", "-b", str(tmp / modbase) if modbase else str(tmp), release], progress,
             "depmod")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return KernelImage(release, vmlinuz, root)


def resolve_kernel(spec: str, progress: Progress) -> KernelImage:
    if spec == "stable":
        return stable_kernel(progress)
    if spec in SUITES:
        return backports_kernel(progress, SUITES[spec])
    path = Path(spec)
    if "/" in spec and not path.exists():
        raise VMError(f"kernel {spec}: no such file (give an existing vmlinuz-RELEASE, or "
                      "-k stable / -k backports)")
    if path.is_dir():
        raise VMError(f"kernel {spec} is a directory: give its boot/vmlinuz-RELEASE file")
    if path.is_file():
        return kernel_file(path)
    raise VMError(f"unknown kernel {spec!r}: use stable, backports, trixie-backports or a "
                  "path to vmlinuz-RELEASE")


def kernel_file(path: Path) -> KernelImage:
    """A kernel named by its file: ROOT/boot/vmlinuz-RELEASE, or 7.x Debian's split layout
    ROOT/usr/lib/modules/RELEASE/vmlinuz (linux-binary-RELEASE). ROOT is the system's own
    / (an installed kernel: KernelImage.root None, so `--boot` takes it) or a tree of its
    own whose modules the guest links in (KernelImage.root)."""
    parent = path.parent
    m = re.fullmatch(r"vmlinuz-(.+)", path.name)
    if m:
        release, root = m[1], parent.parent
    elif path.name == "vmlinuz" and parent.parent.name == "modules" \
            and parent.parent.parent.name == "lib":
        release = parent.name
        usr = parent.parent.parent.parent
        root = usr.parent if usr.name == "usr" else usr
    else:
        raise VMError(f"{path}: expected a file named vmlinuz-RELEASE, or "
                      "lib/modules/RELEASE/vmlinuz")
    installed = root.resolve() == Path("/")
    has_tree = any((root / d / "lib" / "modules").is_dir() for d in (".", "usr"))
    return KernelImage(release, path, None if installed or not has_tree else root)


def kvm_usable(vmlinuz: Path, timeout: float = 20.0) -> bool:
    """Whether a KVM guest really boots here: /dev/kvm can exist and still hang.

    Boots the kernel with no root under KVM and waits for its first console line.
    The verdict is cached for this host boot.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    boot = record.boot_id() or "unknown"
    marker = cache_dir() / f"kvm-{boot}"
    if marker.exists():
        return marker.read_text() == "yes"
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False
    proc = subprocess.Popen(
        [qemu, "-accel", "kvm", "-m", "256", "-nographic", "-no-reboot", "-kernel",
         str(vmlinuz), "-append", "console=ttyS0 panic=-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    ok = False
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    while time.monotonic() < deadline and proc.poll() is None:
        chunk = proc.stdout.read() or b""
        seen += chunk
        if b"Linux version" in seen:
            ok = True
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    marker.write_text("yes" if ok else "no")
    return ok


def vng_path() -> str:
    exe = shutil.which("vng") or str(Path(sys.executable).parent / "vng")
    if not os.path.exists(exe):
        raise VMError("virtme-ng (vng) is not installed: pip install virtme-ng")
    if shutil.which("qemu-system-x86_64") is None:
        raise VMError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    return exe


def run_guest(
    kern: KernelImage,
    out: Path,
    guest_args: list[str],
    progress: Progress,
    cpus: int = 2,
    memory: str = "2G",
    kvm: bool | None = None,
    timeout: float = 1800,
    module: str = "kmodlab.guest",
    append: list[str] | None = None,
    systemd: bool = False,
    qemu_opts: list[str] | None = None,
    prefix: list[str] | None = None,
    console: Path | None = None,
    exec_command: list[str] | None = None,
) -> int:
    """Boot KERN and run MODULE (the guest side) with GUEST_ARGS; its progress streams to us.

    systemd: systemd is PID 1 and MODULE runs once it has started the system (vng
    --systemd); qemu_opts: extra QEMU arguments; prefix: a command vng runs under (e.g. a
    private mount namespace); console: write the guest's console (vng -v) to this file.
    """
    vng = vng_path()
    if kvm is None:
        progress("checking whether KVM works here")
        kvm = kvm_usable(kern.vmlinuz)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    python = str(Path(sys.executable))
    inner = [python, "-m", module, "--out", str(out), "--cache", str(cache)]
    if kern.root is not None:
        inner += ["--kernel-root", str(kern.root)]
    inner += guest_args
    cmd = [vng, "--run", str(kern.vmlinuz), "--cpus", str(cpus), "--memory", memory,
           "--rwdir", str(out), "--rwdir", str(cache), "--cwd", str(out),
           "--exec", shlex.join(exec_command or inner)]
    if not kvm:
        cmd.insert(3, "--disable-kvm")
    for arg in reversed(append or []):  # each goes in front: keep their order (last wins)
        cmd[3:3] = ["--append", arg]
    if systemd:
        cmd.insert(3, "--systemd")
    if qemu_opts:
        cmd.insert(3, f"--qemu-opts={shlex.join(qemu_opts)}")  # "=": it starts with "-"
    if console is not None:
        cmd.insert(3, "-v")  # the boot console, on vng's stderr
    cmd = [*(prefix or []), *cmd]
    progress(f"booting {kern.release} ({cpus} vCPUs, {'KVM' if kvm else 'software emulation'})")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    with open(console, "wb") if console is not None else open(os.devnull, "wb") as log:
        # A session of its own, so that a timeout (or Ctrl-C) ends the whole tree: vng,
        # the prefix and QEMU. subprocess.run's timeout killed the prefix alone, and the
        # QEMU of a locked-up 16-vCPU guest ran on for the rest of a CI run, on every core.
        proc = subprocess.Popen(cmd, env=env, cwd=out, stdin=subprocess.DEVNULL,
                                stderr=log if console else None, start_new_session=True)
        try:
            return wait_guest(proc, timeout, console)
        finally:
            end_session(proc)


# The first line of a guest kernel's fatal report: what follows it up to the end of the
# console is what a failing test prints (the cause is never guessed from it).
_FAULT = re.compile(rb"^.*(?:Oops: |Kernel panic - |BUG: |general protection fault|"
                    rb"kernel BUG at ).*$", re.M)
FAULT_LINES = 60


def console_fault(console: Path) -> list[str]:
    """The guest console's first fatal report and up to FAULT_LINES lines after it, or []
    (no console, or no report)."""
    try:
        data = console.read_bytes()
    except OSError:
        return []
    m = _FAULT.search(data)
    if m is None:
        return []
    lines = data[m.start():].decode(errors="replace").splitlines()
    return lines[:FAULT_LINES]


# The guest kernel's soft-lockup report. Under emulation on a loaded host a CPU can be
# stuck for some tens of seconds and recover; one stuck this long never did.
_LOCKUP = re.compile(rb"BUG: soft lockup - CPU#\d+ stuck for (\d+)s!.*")
LOCKUP_S = 300


def wait_guest(proc: subprocess.Popen[bytes], timeout: float, console: Path | None) -> int:
    """PROC's exit status; a VMError when it runs past TIMEOUT seconds or its guest's
    CONSOLE reports a CPU locked up for LOCKUP_S (that guest never comes back)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            raise VMError(f"the VM did not finish within {timeout:.0f}s")
        if console is None:
            continue
        with open(console, "rb") as f:
            f.seek(max(0, seen - 200))  # a report may straddle the last read
            new = f.read()
            seen = f.tell()
        for m in _LOCKUP.finditer(new):
            if int(m.group(1)) >= LOCKUP_S:
                raise VMError(f"the guest locked up: {m.group(0).decode(errors='replace')} "
                              f"(console: {console})")


def end_session(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop every process of PROC's session (PROC leads it): SIGTERM, and SIGKILL to
    whatever is left after GRACE seconds. Nothing to do where all have exited."""
    deadline = time.monotonic() + grace
    sig: int = signal.SIGTERM
    while True:
        proc.poll()  # reap the leader: a zombie still counts as the group's member
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the group is empty
        if sig == signal.SIGKILL:
            proc.wait()
            return
        time.sleep(0.2)
        # then only ask whether any is left (signal 0), until the grace is over
        sig = signal.SIGKILL if time.monotonic() >= deadline else 0



