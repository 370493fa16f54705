"""The oracle kernel: Debian's linux-source-6.12 or -7.3 built with the kernel's own dups
checks.

CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS and CONFIG_MODULE_STATS make the kernel report its
own verdicts, which the parity report compares with the model's. The build uses
virtme-ng's small config plus the items below, is cached by source version and
config, and installs nothing into the system: the tree under the cache is the
kernel image, its modules (INSTALL_MOD_PATH) and its headers (the build tree).

Two source series, one per dups.c form: 6.12 (bookworm-backports) has the deferred form
(every announce overwrites dup_ret, complete_work completes), 7.3 (trixie-backports) the
refcount form (the first announce wins and completes at once).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kmodlab import programs, storms, vm

# Thousands of "duplicate request" lines must all stay in the kernel log for the check;
# one module is refused by name (the blacklisted storm).
BOOT_ARGS = ["log_buf_len=16M", f"module_blacklist={storms.BLACKLISTED}"]
# What the kernel build needs (flex, bison, bc, pahole, libelf, ...): kmodlab/programs.tsv
BUILD_DEPS = programs.packages("oracle")
CONFIG = [
    "CONFIG_MODULES=y", "CONFIG_MODULE_UNLOAD=y", "CONFIG_DEBUG_FS=y",
    "CONFIG_MODULE_DEBUG=y", "CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS=y", "CONFIG_MODULE_STATS=y",
    "CONFIG_KPROBES=y", "CONFIG_KPROBE_EVENTS=y", "CONFIG_BPF=y", "CONFIG_BPF_SYSCALL=y",
    "CONFIG_BPF_EVENTS=y", "CONFIG_FTRACE=y", "CONFIG_FTRACE_SYSCALLS=y",
    "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y", "CONFIG_DEBUG_INFO_BTF=y",
    "CONFIG_IKHEADERS=n", "CONFIG_TEST_KMOD=m", "CONFIG_TEST_LKM=m",
    # the storms' modules
    "CONFIG_DUMMY=m", "CONFIG_IFB=m", "CONFIG_VETH=m", "CONFIG_MINIX_FS=m", "CONFIG_XFS_FS=m",
    "CONFIG_LIBCRC32C=m", "CONFIG_ATALK=m", "CONFIG_LLC2=m",
    # Signed like a distribution's modules, with the build's own key (certs/ makes one), so
    # that info->len (the signature stripped) differs from the file size; not enforced.
    "CONFIG_MODULE_SIG=y", "CONFIG_MODULE_SIG_FORCE=n", "CONFIG_MODULE_SIG_ALL=y",
    # In-kernel xz decompression (finit_module flag MODULE_INIT_COMPRESSED_FILE), while
    # modules_install keeps them uncompressed: kmod's modprobe then calls finit_module on
    # the plain file, so idempotent() is exercised; the storms compress their own copies.
    "CONFIG_MODULE_COMPRESS=y", "CONFIG_MODULE_COMPRESS_XZ=y", "CONFIG_MODULE_COMPRESS_ALL=n",
    "CONFIG_MODULE_DECOMPRESS=y",
]


@dataclass(frozen=True, slots=True)
class Series:
    """One source series the oracle is built from."""

    name: str  # what `kmodtrace parity --source` takes
    package: str  # the Debian source package
    suite: str  # where its private apt state fetches it
    extra: tuple[str, ...] = ()  # config items on top of CONFIG (part of the cache key)

    @property
    def config(self) -> list[str]:
        return [*CONFIG, *self.extra]


SERIES = {
    "6.12": Series("6.12", "linux-source-6.12", "bookworm-backports"),
    "7.3": Series("7.3", "linux-source-7.3", "trixie-backports", (
        # fanotify's permission events hold a helper's exec of the modprobe wrapper, which
        # the late-announce storm needs; 6.12's cached build predates that storm
        "CONFIG_FANOTIFY=y", "CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y",
        # the load storms' modules, which virtme-ng's 7.3 config no longer brings in:
        # tun, xxhash_generic, blake2b (6.12: blake2b_generic), xor (BTRFS selects it)
        "CONFIG_TUN=m", "CONFIG_CRYPTO_XXHASH=m", "CONFIG_CRYPTO_BLAKE2B=m",
        "CONFIG_BTRFS_FS=m")),
}
DEFAULT_SERIES = "6.12"


# The fix named when the kernel build fails.
MAKE_FIX = ("read the log; `kmodtrace parity --build-only` again resumes the build "
            "(remove the cache directory named there to start over)")


def _run(cmd: list[str], progress: vm.Progress | None, what: str, fix: str,
         cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """One step of the build: its stdout, or VMError naming it and the fix (vm.run_step's
    errors; spelled out here so that each program the oracle runs is named in this file)."""
    if progress is not None:
        progress(what)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    except OSError as e:
        raise vm.not_run(cmd, what, e) from e
    return vm.step_output(p, what, fix)


def install_build_deps(progress: vm.Progress) -> None:
    """apt-get install what the kernel build needs and is missing (VMError if apt fails)."""
    missing = vm.missing_packages(BUILD_DEPS)
    if missing:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], progress,
             f"installing build dependencies: {' '.join(missing)}", vm.APT_FIX)


def series(name: str) -> Series:
    """The source series NAME (VMError naming the known ones)."""
    try:
        return SERIES[name]
    except KeyError:
        raise vm.VMError(f"unknown oracle source {name!r}: use "
                         f"{' or '.join(SERIES)}") from None


def fetch_source(progress: vm.Progress, ser: Series | None = None) -> tuple[str, Path]:
    """(version, unpacked source tree) of the series' linux-source from its suite."""
    ser = ser or SERIES[DEFAULT_SERIES]
    package, suite = ser.package, ser.suite
    vm.backports_kernel(progress, suite)  # sets up the private apt state (and its kernel)
    base = vm.private_apt_dir(suite)
    opts = vm.apt_opts(base)
    info = _run(["apt-cache", *opts, "show", package], progress,
                f"finding {package} in {suite}",
                vm.APT_FIX).split("\n\n")[0]
    m = re.search(r"^Version: (\S+)", info, re.M)
    if m is None:
        raise vm.VMError(f"{package} not found in {suite}")
    version = m[1]
    tree = vm.cache_dir() / "oracle" / f"src-{version}"
    if (tree / "Makefile").exists():
        return version, tree
    dl = base / "debs"
    dl.mkdir(exist_ok=True)
    # named as apt-get download names it (an epoch's ':' as %3a): a copy put there is used
    deb_name = f"{package}_{version.replace(':', '%3a')}_all.deb"
    if not (dl / deb_name).exists():
        _run(["apt-get", *opts, "download", f"{package}={version}"], progress,
             f"downloading {package} {version} (150 MB)", vm.APT_FIX, cwd=dl)
    deb = dl / deb_name if (dl / deb_name).exists() else next(dl.glob(f"{package}_*.deb"), None)
    if deb is None:
        raise vm.VMError(f"apt-get download left no {package}_*.deb in {dl} "
                         f"(fix: {vm.APT_FIX})")
    unpack = vm.cache_dir() / "oracle" / "deb"
    shutil.rmtree(unpack, ignore_errors=True)
    unpack.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(unpack)], progress,
         "unpacking the source package", f"remove {deb} and run again")
    tarball = next((unpack / "usr" / "src").glob("linux-source-*.tar.xz"), None)
    if tarball is None:
        raise vm.VMError(f"{deb} holds no usr/src/linux-source-*.tar.xz "
                         f"(fix: remove {deb} and run again)")
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["tar", "-xf", str(tarball), "-C", str(tmp), "--strip-components=1"],
         progress, f"extracting {tarball.name}", "check the free disk space")
    shutil.rmtree(unpack)
    tmp.rename(tree)
    return version, tree


def config_key(version: str, config: list[str] | None = None) -> str:
    """The cache key of a build: the source version and the config items (CONFIG plus the
    series' extra ones; the key of a series without extras is that of CONFIG alone)."""
    items = CONFIG if config is None else config
    return hashlib.sha256(("\n".join([version, *items])).encode()).hexdigest()[:12]


def build(progress: vm.Progress, jobs: int | None = None,
          source: str = DEFAULT_SERIES) -> vm.KernelImage:
    """Build (or find cached) the oracle kernel of series SOURCE; returns it ready for
    run_guest()."""
    ser = series(source)
    version, src = fetch_source(progress, ser)
    key = config_key(version, ser.config)
    root = vm.cache_dir() / "oracle" / f"root-{key}"
    done = root / "release"
    if done.exists():
        release = done.read_text().strip()
        link_trees(root, release, vm.cache_dir() / "oracle" / f"build-{key}", src)
        return vm.KernelImage(release, root / "boot" / f"vmlinuz-{release}", root)
    install_build_deps(progress)
    build_dir = vm.cache_dir() / "oracle" / f"build-{key}"
    seed_build_dir(build_dir, src, progress)
    build_dir.mkdir(parents=True, exist_ok=True)
    # vng --kconfig calls virtme-configkernel, which sits beside it in the venv
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    vng = vm.vng_path()
    cfg = [a for item in ser.config for a in ("--configitem", item)]
    _run([vng, "--kconfig", *cfg, f"O={build_dir}"], progress,
         "configuring (virtme-ng's config plus the oracle's items)",
         "pip install -U virtme-ng", cwd=src, env=env)
    jobs = jobs or (os.cpu_count() or 2) + 1
    progress(f"building with make -j{jobs} (about 15 minutes on 2 cores)")
    t0 = time.monotonic()
    _make(["-j", str(jobs), "bzImage", "modules"], src, build_dir, progress)
    progress(f"built in {time.monotonic() - t0:.0f}s; installing modules into the cache")
    release = _run(["make", "-s", "kernelrelease", f"O={build_dir}"], None,
                   "make kernelrelease", MAKE_FIX, cwd=src).strip()
    shutil.rmtree(root, ignore_errors=True)
    (root / "boot").mkdir(parents=True)
    _make(["modules_install", f"INSTALL_MOD_PATH={root}", "INSTALL_MOD_STRIP=1"], src,
          build_dir, progress)
    shutil.copy(build_dir / "arch" / "x86" / "boot" / "bzImage", root / "boot" /
                f"vmlinuz-{release}")
    link_trees(root, release, build_dir, src)
    done.write_text(release + "\n")
    return vm.KernelImage(release, root / "boot" / f"vmlinuz-{release}", root)


def seed_build_dir(build_dir: Path, src: Path, progress: vm.Progress) -> None:
    """Start a new config's build from a copy of the newest finished build of the same
    source tree, if there is one: make then rebuilds only what the changed items touch
    (about 8 minutes instead of 14-40). Without one (a fresh machine) the build starts
    from nothing. The copy keeps mtimes, which make's incremental rebuild relies on."""
    if build_dir.exists():
        return
    include = f"include {src}/Makefile"
    seeds = [d for d in build_dir.parent.glob("build-*")
             if (d / "vmlinux").exists() and (d / ".config").exists()
             and include in _read(d / "Makefile")]
    if not seeds:
        return
    seed = max(seeds, key=lambda d: (d / "vmlinux").stat().st_mtime)
    tmp = build_dir.with_name(build_dir.name + ".seed")
    shutil.rmtree(tmp, ignore_errors=True)
    progress(f"copying {seed.name} to start from its objects (a few minutes)")
    shutil.copytree(seed, tmp, symlinks=True)
    tmp.rename(build_dir)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def link_trees(root: Path, release: str, build_dir: Path, src: Path) -> None:
    """bcc and kbuild look in /lib/modules/REL/build (generated headers, O= tree) and
    /lib/modules/REL/source (the source headers): point them at the cache."""
    moddir = root / "lib" / "modules" / release
    for name, target in (("build", build_dir), ("source", src)):
        link = moddir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def _make(targets: list[str], src: Path, build_dir: Path, progress: vm.Progress) -> None:
    """Run make, showing one line of progress every 30 s instead of its whole output."""
    log = build_dir / "make.log"
    try:
        proc = subprocess.Popen(["make", f"O={build_dir}", *targets], cwd=src,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as e:
        raise vm.VMError("make is not installed: apt-get install make") from e
    assert proc.stdout is not None
    last, errors = time.monotonic(), list[str]()
    with open(log, "w") as f:
        for line in proc.stdout:
            f.write(line)
            if "error" in line.lower():
                errors = [*errors[-2:], line.strip()]
            if time.monotonic() - last > 30:
                progress(f"make: {line.strip()[:100]}")
                last = time.monotonic()
    if proc.wait() != 0:
        why = " | ".join(errors) or "see the log"
        raise vm.VMError(f"make {' '.join(targets)} failed (exit {proc.returncode}): {why}; "
                         f"full log in {log} (fix: {MAKE_FIX})")


# ---- golden recordings ---------------------------------------------------------------------

# What parity and the oracle tests read of a run's results directory, kept in the checkout
# (tests/data/oracle-RELEASE) so that every `make test` replays the model against the
# kernel's own verdicts without building the oracle (14-88 min on 2 cores). The large
# files are zstd-compressed (zstandard is a runtime dependency already).
GOLDEN_FILES = ("trace.jsonl", "live.out", "dmesg.txt", "stats-before.txt",
                "stats-after.txt", "manifest.json")
_COMPRESSED = ("trace.jsonl", "live.out", "dmesg.txt")


def save_golden(outdir: Path, dest: Path) -> Path:
    """Copy an oracle run's results into DEST (made anew), the large files compressed."""
    import zstandard

    missing = [n for n in GOLDEN_FILES if not (outdir / n).is_file()]
    if missing:
        raise vm.VMError(f"{outdir} lacks {', '.join(missing)}: not a finished oracle run")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in GOLDEN_FILES:
        data = (outdir / name).read_bytes()
        if name in _COMPRESSED:
            (tmp / f"{name}.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
        else:
            (tmp / name).write_bytes(data)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def open_golden(golden: Path, outdir: Path) -> Path:
    """Unpack a golden recording into OUTDIR: a results directory as the run left it."""
    import zstandard

    outdir.mkdir(parents=True, exist_ok=True)
    for name in GOLDEN_FILES:
        src = golden / (f"{name}.zst" if name in _COMPRESSED else name)
        data = src.read_bytes()
        if name in _COMPRESSED:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
        (outdir / name).write_bytes(data)
    return outdir
