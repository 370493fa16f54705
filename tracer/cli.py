"""kmodtrace command line: live, record, report, boot.

Commands of the lab (vm, parity, bench) live in the kmodlab package, which registers
them through the `kmodtrace.commands` entry point group: the tracer never imports the lab.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import entry_points
from typing import NoReturn

import click

from tracer import __version__, report
from tracer.kernel import Features, override_announce
from tracer.live import Options, Run
from tracer.model import profile_json, profile_note
from tracer.probes import TracerError
from tracer.record import TraceFormatError, read_trace
from tracer.session import replay


def fail(msg: str) -> NoReturn:
    click.echo(f"kmodtrace: {msg}", err=True)
    sys.exit(1)


def progress(msg: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmodtrace")
def main() -> None:
    """Trace module auto-loading races: requests, modprobe spawns and loads."""


# dups.c's announce form cannot be seen on a kernel without dups.c: deferred is assumed.
announce_option = click.option(
    "--announce", type=click.Choice(["first", "deferred"]),
    callback=lambda _ctx, _param, v: override_announce(v),
    help="dups.c announce form to model (default: detected, else deferred)")


def _trace(opts: Options) -> None:
    try:
        rc = Run(opts).run()
    except TracerError as e:
        fail(str(e))
    sys.exit(rc)


@main.command()
@click.option("-p", "--pid", type=int, help="only stories of this requester/loader pid")
@click.option("-m", "--module", help="only this module or request name (dashes = underscores)")
@click.option("-T", "--timestamp", "timestamps", is_flag=True, help="print wall-clock time")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per story")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="also record to FILE")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="write the attach time here once every probe is attached")
@announce_option
def live(pid: int | None, module: str | None, timestamps: bool, as_json: bool,
         duration: float | None, output: str | None, ready_file: str | None,
         announce: str | None = None) -> None:
    """Print one line per request and load as they finish; a summary at exit.

    \b
    examples:
      kmodtrace live              # trace until Ctrl-C
      kmodtrace live -m xfs -T    # only xfs, with timestamps
      kmodtrace live --json -d 30 # JSON lines for 30 seconds
    """
    _trace(Options(output=output, duration=duration, pid=pid, module=module,
                   timestamps=timestamps, json=as_json, ready_file=ready_file))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="trace file (JSON lines, mode 0600)")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="write the attach time here once every probe is attached")
@click.option("--until-settled", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="stop once boot finished and udev's queue stayed empty this long")
@announce_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(output: str, duration: float | None, ready_file: str | None,
           until_settled: float | None, command: tuple[str, ...],
           announce: str | None = None) -> None:
    """Record a trace to FILE, around COMMAND if given (kmodtrace record -o F -- CMD...)."""
    _trace(Options(output=output, duration=duration, quiet=True, command=list(command),
                   ready_file=ready_file, until_settled=until_settled))


@main.command(name="report")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable report (see README)")
@click.option("--perfetto", type=click.Path(dir_okay=False),
              help="also write Chrome trace JSON for ui.perfetto.dev")
@click.option("--plot", type=click.Path(dir_okay=False), help="also draw the timeline (.png/.svg)")
@announce_option
def report_cmd(trace_file: str, as_json: bool, perfetto: str | None = None,
               plot: str | None = None, announce: str | None = None) -> None:
    """Judge a recorded trace offline: the same model as `live`."""
    show_report(trace_file, as_json, perfetto, plot)


def show_report(trace_file: str, as_json: bool = False, perfetto: str | None = None,
                plot: str | None = None) -> None:
    """What `report` prints; `boot show` and the lab's `vm` print the same."""
    try:
        trace = read_trace(trace_file)
    except TraceFormatError as e:
        fail(str(e))
    profile = Features.from_dict(trace.header.get("features", {})).profile
    rep = replay(trace.events, profile)
    assert rep.judge is not None
    if perfetto:
        from tracer.perfetto import write_chrome_trace

        write_chrome_trace(rep, trace.header, perfetto)
        click.echo(f"wrote {perfetto} (open it in ui.perfetto.dev)", err=True)
    if plot:
        from tracer.plot import plot as draw

        try:
            draw(rep, plot, title=f"kmodtrace: {trace.header.get('kernel', '')}")
        except ValueError as e:
            fail(str(e))
        click.echo(f"wrote {plot}", err=True)
    lost = (trace.trailer or {}).get("lost")
    if as_json:
        out = {
            "kernel": trace.header.get("kernel"), "profile": profile.name,
            "lost_events": lost, "missed_probes": (trace.trailer or {}).get("missed"),
            "complete": trace.trailer is not None, "first_bad_line": trace.first_bad_line,
            **profile_json(profile),
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
    click.echo(profile_note(profile))
    if trace.trailer is None:
        click.echo("trace has no trailer: the recorder was killed; all written events used")
    if trace.first_bad_line:
        click.echo(f"{trace.bad_lines} unreadable line(s), first at line {trace.first_bad_line}")
    report.print_table(sys.stdout, report.SUMMARY_COLUMNS,
                       report.summary_rows(rep.judge.model.modules()))


@main.group()
def boot() -> None:
    """Record module loading from early boot with a systemd unit."""


@boot.command("install")
@click.option("--root", default="/", show_default=True, help="install into another root")
def boot_install(root: str) -> None:
    """Install and enable kmodtrace-boot.service (idempotent)."""
    from tracer import boot as bootmod

    try:
        changed = bootmod.install(root=root, notice=lambda m: click.echo(m, err=True))
    except bootmod.BootError as e:
        fail(str(e))
    click.echo("\n".join(f"wrote {p}" for p in changed) or "already installed")


@boot.command("uninstall")
@click.option("--root", default="/", show_default=True)
def boot_uninstall(root: str) -> None:
    """Remove what install wrote; recorded traces are kept (idempotent)."""
    from tracer import boot as bootmod

    changed = bootmod.uninstall(root=root, notice=lambda m: click.echo(m, err=True))
    click.echo("\n".join(f"removed {p}" for p in changed) or "not installed")


@boot.command("status")
@click.option("--root", default="/", show_default=True)
def boot_status(root: str) -> None:
    """Whether the unit is installed and enabled, and the recorded boots."""
    from tracer import boot as bootmod

    st = bootmod.status(root=root)
    click.echo(f"{st['unit']}: {'installed' if st['installed'] else 'not installed'}, "
               f"{'enabled' if st['enabled'] else 'not enabled'}"
               + ("" if st["current"] or not st["installed"] else ", out of date"))
    for w in st["warnings"]:
        click.echo(f"warning: {w}")
    if st.get("systemd"):
        click.echo(" ".join(f"{k}={v}" for k, v in st["systemd"].items()))
    for t in st["traces"]:
        click.echo(f"{t['boot']}  {t['size']:>10}  {time.ctime(t['mtime'])}  {t['path']}"
                   + ("  (this boot)" if t["this_boot"] else ""))


@boot.command("show")
@click.argument("which", required=False)
@click.option("--json", "as_json", is_flag=True)
def boot_show(which: str | None, as_json: bool) -> None:
    """Report the last boot's trace, or WHICH: a boot id (prefix), 0, -1, ..."""
    from tracer import boot as bootmod

    try:
        path = bootmod.find_boot_trace(bootmod.LOG_DIR, which)
    except ValueError as e:
        fail(str(e))
    click.echo(f"boot trace {path}", err=True)
    show_report(str(path), as_json)


def _add_plugin_commands() -> None:
    """Commands other packages register (the lab's vm, parity, bench)."""
    for ep in entry_points(group="kmodtrace.commands"):
        try:
            cmd = ep.load()
        except ImportError:  # a plugin whose own dependencies are missing: leave it out
            continue
        if isinstance(cmd, click.Command):
            main.add_command(cmd, ep.name)


_add_plugin_commands()
