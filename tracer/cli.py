"""kmodtrace command line: live, record, report, vm."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from tracer import __version__, report
from tracer.kernel import Features
from tracer.live import Options, Run
from tracer.probes import TracerError
from tracer.record import TraceFormatError, read_trace
from tracer.session import replay


def _fail(msg: str) -> None:
    click.echo(f"kmodtrace: {msg}", err=True)
    sys.exit(1)


def _progress(msg: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmodtrace")
def main() -> None:
    """Trace module auto-loading races: requests, modprobe spawns and loads."""


def _trace(opts: Options) -> None:
    try:
        rc = Run(opts).run()
    except TracerError as e:
        _fail(str(e))
    sys.exit(rc)


@main.command()
@click.option("-p", "--pid", type=int, help="only stories of this requester/loader pid")
@click.option("-m", "--module", help="only this module or request name (dashes = underscores)")
@click.option("-T", "--timestamp", "timestamps", is_flag=True, help="print wall-clock time")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per story")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="also record to FILE")
def live(pid: int | None, module: str | None, timestamps: bool, as_json: bool,
         duration: float | None, output: str | None) -> None:
    """Print one line per request and load as they finish; a summary at exit.

    \b
    examples:
      kmodtrace live              # trace until Ctrl-C
      kmodtrace live -m xfs -T    # only xfs, with timestamps
      kmodtrace live --json -d 30 # JSON lines for 30 seconds
    """
    _trace(Options(output=output, duration=duration, pid=pid, module=module,
                   timestamps=timestamps, json=as_json))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="trace file (JSON lines, mode 0600)")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="write the attach time here once every probe is attached")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(output: str, duration: float | None, ready_file: str | None,
           command: tuple[str, ...]) -> None:
    """Record a trace to FILE, around COMMAND if given (kmodtrace record -o F -- CMD...)."""
    _trace(Options(output=output, duration=duration, quiet=True, command=list(command),
                   ready_file=ready_file))


@main.command(name="report")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
def report_cmd(trace_file: str, as_json: bool) -> None:
    """Judge a recorded trace offline: the same model as `live`."""
    try:
        trace = read_trace(trace_file)
    except TraceFormatError as e:
        _fail(str(e))
    profile = Features.from_dict(trace.header.get("features", {})).profile
    rep = replay(trace.events, profile)
    assert rep.judge is not None
    lost = (trace.trailer or {}).get("lost")
    if as_json:
        out = {
            "kernel": trace.header.get("kernel"), "profile": profile.name,
            "lost_events": lost, "missed_probes": (trace.trailer or {}).get("missed"),
            "complete": trace.trailer is not None, "first_bad_line": trace.first_bad_line,
            "requests": [report.request_json(r, v, trace.ksyms) for r, v in rep.requests],
            "loads": [report.load_json(ld, v) for ld, v in rep.loads],
            "modules": {k: report.module_json(m) for k, m in rep.judge.model.modules().items()},
        }
        click.echo(json.dumps(out, indent=1))
        return
    t0 = trace.header.get("start_mono_ns", 0)
    click.echo(report.HEADER)
    lines = [(r.start_ns, report.request_line(r, v, t0)) for r, v in rep.requests]
    lines += [(ld.start_ns, report.load_line(ld, v, t0)) for ld, v in rep.loads]
    for _, line in sorted(lines):
        click.echo(line)
    click.echo(f"\nkernel {trace.header.get('kernel')} profile {profile.name}: "
               f"{len(trace.events)} events, lost {lost}")
    if trace.trailer is None:
        click.echo("trace has no trailer: the recorder was killed; all written events used")
    if trace.first_bad_line:
        click.echo(f"{trace.bad_lines} unreadable line(s), first at line {trace.first_bad_line}")
    report.print_table(sys.stdout, report.SUMMARY_COLUMNS,
                       report.summary_rows(rep.judge.model.modules()))


@main.command()
@click.option("-k", "--kernel", "kernel_spec", default="stable", show_default=True,
              help="stable (linux-image-amd64), backports, or a path to vmlinuz-RELEASE")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="results directory")
@click.option("--cpus", default=2, show_default=True)
@click.option("--memory", default="2G", show_default=True)
@click.option("--kvm/--no-kvm", default=None, help="default: use KVM only if a probe boot works")
@click.option("-c", "--command", help="trace this shell command instead of the demo storms")
def vm(kernel_spec: str, out: str | None, cpus: int, memory: str, kvm: bool | None,
       command: str | None) -> None:
    """Boot a stock Debian kernel in virtme-ng, trace storms (or COMMAND), report."""
    from tracer import vm as vmmod

    try:
        kern = vmmod.resolve_kernel(kernel_spec, _progress)
        outdir = Path(out or f"out/vm-{kern.release}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        args = ["--command", command] if command else []
        rc = vmmod.run_guest(kern, outdir, args, _progress, cpus=cpus, memory=memory, kvm=kvm)
    except vmmod.VMError as e:
        _fail(str(e))
    trace = outdir / "trace.jsonl"
    if rc != 0 or not trace.exists():
        _fail(f"the guest failed (exit {rc}); see {outdir}/tracer.log")
    _progress(f"results in {outdir}")
    report_cmd.callback(str(trace), False)  # type: ignore[misc]
