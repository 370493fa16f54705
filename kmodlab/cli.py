"""The lab's commands, added to `kmodtrace` through the kmodtrace.commands entry points."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tracer.cli import announce_option, show_report
from tracer.cli import fail as _fail
from tracer.cli import progress as _progress
from tracer.record import TraceFormatError


@click.command()
@click.option("-k", "--kernel", "kernel_spec", default="stable", show_default=True,
              help="stable (linux-image-amd64), backports (bookworm-backports' 6.12), "
              "trixie-backports (its 7.x, in Debian's linux-binary/linux-modules layout, "
              "no headers: the tracer uses BTF), or a path to vmlinuz-RELEASE")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="results directory")
@click.option("--cpus", default=2, show_default=True)
@click.option("--memory", default="2G", show_default=True)
@click.option("--kvm/--no-kvm", default=None, help="default: use KVM only if a probe boot works")
@click.option("-c", "--command", help="trace this shell command instead of the demo storms")
@click.option("--boot", "boot_trace", is_flag=True,
              help="boot systemd with `kmodtrace boot install`'s unit instead; the boot trace, "
              "`boot show --json` and systemd's timings land in the results directory")
@click.option("--no-unit", is_flag=True,
              help="with --boot: the same boot without the unit (the baseline for its delay)")
@click.option("--advice-from", type=click.Path(dir_okay=False, exists=True), metavar="TRACE",
              help="with --boot: apply the advice of the boot traced in TRACE (a blacklist on "
                   "the kernel command line, a modules-load.d preload ordered before udev's "
                   "coldplug); compare the two with `kmodtrace boot diff`")
def vm(kernel_spec: str, out: str | None, cpus: int, memory: str, kvm: bool | None,
       command: str | None, boot_trace: bool, no_unit: bool,
       advice_from: str | None = None) -> None:
    """Boot a stock Debian kernel in virtme-ng, trace storms (or COMMAND, or the boot)."""
    from kmodlab import vm as vmmod

    if advice_from and not boot_trace:
        _fail("--advice-from applies a boot's advice to another boot (fix: add --boot)", 2)
    try:
        kern = vmmod.resolve_kernel(kernel_spec, _progress)
        outdir = Path(out or f"out/vm-{kern.release}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        if boot_trace:
            from kmodlab import vmboot

            applied = None
            if advice_from:
                try:
                    applied = vmboot.advice_from(advice_from, _progress)
                except TraceFormatError as e:
                    _fail(str(e))
            rc = vmboot.run_boot(kern, outdir, _progress, cpus=cpus, memory=memory, kvm=kvm,
                                 unit=not no_unit, applied=applied)
        else:
            args = ["--command", command] if command else []
            rc = vmmod.run_guest(kern, outdir, args, _progress, cpus=cpus, memory=memory,
                                 kvm=kvm)
    except vmmod.VMError as e:
        _fail(str(e))
    if no_unit and boot_trace:
        if rc != 0:
            _fail(f"the guest failed (exit {rc}); see the logs in {outdir}")
        _progress(f"results in {outdir}")
        return
    trace = outdir / ("boot.jsonl" if boot_trace else "trace.jsonl")
    if rc != 0 or not trace.exists():
        _fail(f"the guest failed (exit {rc}); see the logs in {outdir}")
    _progress(f"results in {outdir}")
    show_report(str(trace))


@click.command()
@click.option("-k", "--kernel", "kernel_spec", default="stable", show_default=True,
              help="kernel for the VM figures (see `kmodtrace vm`)")
@click.option("--no-vm", is_flag=True, help="only the offline replay figure")
@click.option("--events", default=1_000_000, show_default=True, help="replay trace size")
@click.option("--sizes", default="1000,10000", show_default=True,
              help="request storm sizes for the loss figure")
@click.option("--modprobes", default=1000, show_default=True,
              help="concurrent modprobes for the loss figure")
@click.option("--overhead-count", default=1000, show_default=True,
              help="requests per storm for the overhead figure")
@click.option("--soak", "soak_s", default=600.0, show_default=True,
              help="seconds of repeated storms for the memory soak (0: none)")
@click.option("--boot/--no-boot", default=True, show_default=True,
              help="the boot unit's delay: 3 alternating pairs of 16-vCPU VM boots "
                   "without and with it (6 more boots)")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="VM results directory")
@click.option("--large-traces", "large_only", is_flag=True,
              help="only figure 7, host-side: report --json and text of 1M events, --plot of 10k")
def bench(kernel_spec: str, no_vm: bool, events: int, sizes: str, modprobes: int,
          overhead_count: int, soak_s: float, boot: bool, out: str | None,
          large_only: bool = False) -> None:
    """Print the benchmark figures: attach time, loss, overhead, replay speed, memory,
    boot delay, large traces."""
    from kmodlab import bench as benchmod
    from kmodlab import vm as vmmod

    if large_only:
        for line in benchmod.render([], None, None, benchmod.large_trace_figures(_progress)):
            click.echo(line)
        return
    replay_fig = benchmod.replay_speeds([min(10_000, events), events], _progress)
    boot_fig = None
    vm_fig = None
    if not no_vm:
        outdir = Path(out or f"out/bench-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        try:
            vm_fig = benchmod.vm_figures(kernel_spec, outdir, _progress, sizes, modprobes,
                                         overhead_count, soak_s)
            if boot:
                boot_fig = benchmod.boot_figures(kernel_spec, outdir, _progress)
        except vmmod.VMError as e:
            _fail(str(e))
        assert vm_fig is not None
        click.echo(f"kernel {vm_fig['kernel']}, {vm_fig['cpus']} vCPUs; raw figures in "
                   f"{outdir}/bench.json")
    large_fig = benchmod.large_trace_figures(_progress)
    for line in benchmod.render(replay_fig, vm_fig, boot_fig, large_fig):
        click.echo(line)


@click.command()
@click.option("-o", "--out", type=click.Path(file_okay=False), help="results directory")
@click.option("--source", type=click.Choice(["6.12", "7.3"]), default="6.12",
              show_default=True,
              help="the oracle's source series: 6.12 (bookworm-backports, dups.c's deferred "
              "form) or 7.3 (trixie-backports, its refcount form: the first announce wins)")
@click.option("--build-only", is_flag=True, help="build (or find) the oracle kernel and stop")
@click.option("--trace-dir", type=click.Path(file_okay=False, exists=True),
              help="check an earlier oracle run's results instead of booting")
@click.option("--save-golden", type=click.Path(file_okay=False),
              help="after a run with parity OK, keep its results as a golden recording in "
                   "this directory (tests/data/oracle-RELEASE), replayed by `make test`")
@announce_option
def parity(out: str | None, source: str, build_only: bool, trace_dir: str | None,
           save_golden: str | None, announce: str | None = None) -> None:
    """Prove the model against the oracle kernel's own dups.c and MODULE_STATS.

    Builds Debian's linux-source-6.12 (or -7.3) with MODULE_DEBUG_AUTOLOAD_DUPS and
    MODULE_STATS once (cached; 14 to 88 minutes on 2 cores), boots it, runs the oracle
    storms and prints per-request and per-run parity. Exit status 1 on any mismatch.
    --announce models the other dups.c form, to see where they differ (no golden is
    saved from such a run).
    """
    from kmodlab import oracle
    from kmodlab import parity as paritymod
    from kmodlab import vm as vmmod

    if trace_dir is None:
        try:
            kern = oracle.build(_progress, source=source)
            if build_only:
                click.echo(f"oracle kernel {kern.release}: {kern.vmlinuz}")
                return
            outdir = Path(out or f"out/parity-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
            rc = vmmod.run_guest(kern, outdir, ["--scenarios", "oracle"], _progress,
                                 append=oracle.BOOT_ARGS)
        except vmmod.VMError as e:
            _fail(str(e))
        if rc != 0:
            _fail(f"the oracle guest failed (exit {rc}); see the logs in {outdir}")
    else:
        outdir = Path(trace_dir)
    try:
        par = paritymod.run(outdir, announce)
    except TraceFormatError as e:
        _fail(f"{e}; is {outdir} the results directory of an oracle run?")
    for line in paritymod.render(par):
        click.echo(line)
    if save_golden is not None and par.ok and announce is None:
        try:
            click.echo(f"golden recording: {oracle.save_golden(outdir, Path(save_golden))}")
        except (OSError, vmmod.VMError) as e:
            _fail(f"cannot save the golden recording: {e}")
    sys.exit(0 if par.ok else 1)
