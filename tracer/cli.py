"""kmodtrace command line: live, record, report, boot.

Commands of the lab (vm, parity, bench) live in the kmodlab package, which registers
them through the `kmodtrace.commands` entry point group: the tracer never imports the lab.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tracer import __version__
from tracer.errors import TracerError
from tracer.options import Options, check_options
from tracer.probes import Tracer
from tracer.record import TraceFormatError, TraceOutputError, check_output
from tracer.text import shown

if TYPE_CHECKING:  # reportdata replays traces: imported where a command needs it
    from tracer.record import Trace
    from tracer.reportdata import Filter
    from tracer.session import Replay

DEBUG_ENV = "KMODTRACE_DEBUG"


def fail(msg: str, code: int = 1) -> NoReturn:
    """The one line every failure ends in: the cause and the fix."""
    say(f"kmodtrace: {msg}", err=True)
    sys.exit(code)


def say(line: str, err: bool = False) -> None:
    """Print one line for a human: what a traced process named, shown escaped."""
    click.echo(shown(line), err=err)


def _notice(msg: str) -> None:
    say(msg, err=True)


def progress(msg: str) -> None:
    say(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


class _Main(click.Group):
    """The kmodtrace group: whatever goes wrong in a command ends in one line, never a
    traceback (KMODTRACE_DEBUG=1 lets unexpected ones through)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        prog_name = prog_name or "kmodtrace"  # also under `python -m tracer`
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "kmodtrace"
            fail(f"{e.format_message()} (see `{where} --help`)", e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        except BrokenPipeError:  # `kmodtrace report T | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            if isinstance(e, OSError) and e.filename is not None:
                fail(f"{e.filename}: {e.strerror} "
                     f"(run with {DEBUG_ENV}=1 for the traceback)")
            fail(f"unexpected error: {type(e).__name__}: {e} "
                 f"(run with {DEBUG_ENV}=1 for the traceback)")
        sys.exit(rv if isinstance(rv, int) else 0)

    # Plugin commands are looked up only when asked for: scanning every installed
    # distribution's entry points costs a few hundred ms natively, seconds under
    # emulation, and `live`/`record` start-up is attach time.
    _plugins_added = False

    def _add_plugins(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            _add_plugin_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self._add_plugins()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugins()
        return super().list_commands(ctx)


def _print_ebpf(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--ebpf: print the BPF program and exit, as bcc's tools do (no root, no bcc)."""
    if not value or ctx.resilient_parsing:
        return
    from tracer.probes import program_text

    click.echo(program_text(), nl=False)
    ctx.exit(0)


ebpf_option = click.option("--ebpf", is_flag=True, is_eager=True, expose_value=False,
                           callback=_print_ebpf, help="print the BPF program and exit")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmodtrace")
def main() -> None:
    """Trace module auto-loading races: requests, modprobe spawns and loads."""


# dups.c's announce form is read from dups.c where it is built in, else from the release
# (tracer/kernel.py dups_form()).
announce_option = click.option(
    "--announce", type=click.Choice(["first", "deferred"]),
    help="dups.c announce form to model (default: detected from the kernel's dups.c, "
         "else by release)")


early_option = click.option(
    "--early/--no-early", default=True, show_default=True,
    help="merge what the kernel's boot-time tracing recorded before attaching (see "
         "`kmodtrace boot install`)")


def _trace(opts: Options) -> None:
    try:
        check_options(opts)
        tracer = Tracer(lambda ev: None, notice=_notice)
        tracer.begin()
        # the session's modules load while bcc compiles
        from tracer.live import start

        run = start(opts, tracer=tracer)
    except (TracerError, TraceOutputError) as e:
        fail(str(e))
    try:
        rc = run.run()
    except TracerError as e:
        fail(str(e))
    sys.exit(rc)


pid_option = click.option("-p", "--pid", type=int,
                          help="only stories of this requester/loader pid")
module_option = click.option("-m", "--module",
                             help="only this module or request name (dashes = underscores)")
failed_option = click.option("-x", "--failed", "failed_only", is_flag=True,
                             help="only duplicates, failures and loads that wasted memory")


@main.command()
@pid_option
@module_option
@failed_option
@click.option("-T", "--timestamp", "timestamps", is_flag=True, help="print wall-clock time")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per story")
@click.option("--wide", is_flag=True, help="every detail, past 100 columns")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="also record to FILE (never through a symlink)")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="write the attach time here once every probe is attached")
@early_option
@ebpf_option
@announce_option
def live(pid: int | None, module: str | None, failed_only: bool, timestamps: bool,
         as_json: bool, wide: bool, duration: float | None, output: str | None,
         ready_file: str | None, early: bool = True,
         announce: str | None = None) -> None:
    """Print one line per request and load as they finish; a summary at exit.

    \b
    examples:
      kmodtrace live              # trace until Ctrl-C
      kmodtrace live -m xfs -T    # only xfs, with timestamps
      kmodtrace live -x           # only duplicates and failures
      kmodtrace live --json -d 30 # JSON lines for 30 seconds
      kmodtrace live --ebpf       # print the BPF program and exit
    """
    _trace(Options(output=output, duration=duration, pid=pid, module=module,
                   timestamps=timestamps, json=as_json, ready_file=ready_file,
                   failed_only=failed_only, wide=wide, announce=announce, early=early))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="trace file (JSON lines, mode 0600, never through a symlink)")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="stop after SECONDS")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="write the attach time here once every probe is attached")
@click.option("--until-settled", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="stop once boot finished and udev's queue stayed empty this long")
@early_option
@ebpf_option
@announce_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(output: str, duration: float | None, ready_file: str | None,
           until_settled: float | None, command: tuple[str, ...], early: bool = True,
           announce: str | None = None) -> None:
    """Record a trace to FILE, around COMMAND if given (kmodtrace record -o F -- CMD...)."""
    _trace(Options(output=output, duration=duration, quiet=True, command=list(command),
                   ready_file=ready_file, until_settled=until_settled, announce=announce,
                   early=early))


@main.command(name="report")
@click.argument("trace_file")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report (see README)")
@click.option("--wide", is_flag=True, help="every detail, past 100 columns")
@click.option("--perfetto", type=click.Path(dir_okay=False),
              help="also write Chrome trace JSON for ui.perfetto.dev")
@click.option("--plot", type=click.Path(dir_okay=False), help="also draw the timeline (.png/.svg)")
@pid_option
@module_option
@failed_option
@announce_option
def report_cmd(trace_file: str, as_json: bool, wide: bool, perfetto: str | None = None,
               plot: str | None = None, pid: int | None = None, module: str | None = None,
               failed_only: bool = False, announce: str | None = None) -> None:
    """Judge a recorded trace offline: the same model as `live`.

    -p, -m and -x keep the stories of that pid, of that module, or the duplicates and
    failures, and the per-module rows they touch (each with its whole-trace figures);
    --perfetto and --plot draw the whole trace.
    """
    show_report(trace_file, as_json, perfetto, plot, wide, announce,
                _filter(pid, module, failed_only))


def _filter(pid: int | None, module: str | None, failed_only: bool) -> Filter:
    from tracer.reportdata import Filter

    return Filter(pid, module, failed_only)


def show_report(trace_file: str, as_json: bool = False, perfetto: str | None = None,
                plot: str | None = None, wide: bool = False,
                announce: str | None = None, flt: Filter | None = None) -> None:
    """What `report` prints; `boot show` and the lab's `vm` print the same. FLT: a
    reportdata.Filter (-p, -m, -x) for the text and JSON views."""
    from tracer import reportdata

    try:
        # before the replay, which takes seconds: a refused output path fails fast
        for out, what in ((perfetto, "Perfetto trace"), (plot, "plot")):
            if out:
                check_output(out, what, keep=trace_file)
        # the events are freed as the replay feeds them: only its stories are used here
        trace, rep = reportdata.replay_file(trace_file, announce, keep_events=False)
    except (TraceFormatError, TraceOutputError) as e:
        fail(str(e))
    # The replay's objects live as long as the views: the cyclic GC need not scan them
    # again (its full collections while the views allocate took a fifth of a 1M-event
    # report). Thawed after, for a caller that goes on (the tests, the lab's vm).
    gc.freeze()
    try:
        _show_views(trace, rep, trace_file, as_json, perfetto, plot, wide, flt)
    finally:
        gc.unfreeze()


def _show_views(trace: Trace, rep: Replay, trace_file: str, as_json: bool,
                perfetto: str | None, plot: str | None, wide: bool,
                flt: Filter | None) -> None:
    from tracer import report, reportdata

    judged = reportdata.build(trace, rep)
    if flt is not None:
        judged = reportdata.narrow(judged, flt)
    if perfetto:
        from tracer.perfetto import write_chrome_trace

        try:
            write_chrome_trace(rep, trace.header, perfetto, keep=trace_file)
        except TraceOutputError as e:
            fail(str(e))
        except OSError as e:
            fail(f"cannot write {perfetto}: {e.strerror}")
        say(f"wrote {perfetto} (open it in ui.perfetto.dev)", err=True)
    if plot:
        from tracer.plot import plot as draw

        try:
            notes = draw(rep, plot, title=f"kmodtrace: {trace.header.get('kernel', '')}",
                         keep=trace_file)
        except (ValueError, TraceOutputError) as e:
            fail(str(e))
        except OSError as e:
            fail(f"cannot write {plot}: {e.strerror}")
        for note in notes:  # the rows drawn aggregated
            say(note, err=True)
        say(f"wrote {plot}", err=True)
    if as_json:  # streamed: a large trace's document is never whole in memory
        sys.stdout.flush()
        report.write_document(judged, sys.stdout.buffer.write)
        sys.stdout.buffer.flush()
        return
    lines = report.render_text(judged, wide)
    for i in range(0, len(lines), 4096):  # as say() prints each, in blocks: one write each
        click.echo("\n".join(map(shown, lines[i:i + 4096])))


@main.group()
def boot() -> None:
    """Record module loading from early boot with a systemd unit."""


kernel_option = click.option(
    "--kernel", metavar="RELEASE|PATH",
    help="the kernel whose BTF gives the boot-time probes' offsets: an installed release or "
         "a vmlinuz path (default: the running kernel)")
buffer_option = click.option(
    "--buffer-kb", type=click.IntRange(min=16), default=512, show_default=True,
    help="boot-time trace buffer per CPU (trace_buf_size), in KiB")


@boot.command("install")
@click.option("--root", default="/", show_default=True, help="install into another root")
@click.option("--bootloader", is_flag=True,
              help="also record from the kernel's first instant: write a GRUB drop-in with "
                   "the boot-time tracing words and run update-grub")
@kernel_option
@buffer_option
def boot_install(root: str, bootloader: bool, kernel: str | None, buffer_kb: int) -> None:
    """Install and enable kmodtrace-boot.service and kmodtrace-boot-beside.service
    (idempotent), and arrange (or print) the kernel command line that records what happens
    before the tracer attaches; with that line the boot runs the beside unit, which holds
    nothing back."""
    from tracer import boot as bootmod
    from tracer import bootline

    notice = _notice
    try:
        changed = bootmod.install(root=root, notice=notice)
    except bootmod.BootError as e:
        fail(str(e))
    try:
        text = bootline.line(kernel, buffer_kb)
        if bootloader:
            changed += bootline.install(root, text, notice)
    except bootline.BootLineError as e:
        if bootloader:
            fail(str(e))
        notice(f"no boot-time tracing: {e}")
        text = ""
    click.echo("\n".join(f"wrote {p}" for p in changed) or "already installed")
    mode, why = bootmod.next_mode(root)
    _say_mode(bootmod, mode, why)
    if text and not bootloader:
        click.echo(f"To see the boot before the tracer attaches (and keep udev from waiting), "
                   f"{bootline.where_to_add()}")
        click.echo(text)


def _say_mode(bootmod: Any, mode: str, why: str) -> None:
    """What boot install and boot status say about the next boot's mode."""
    click.echo(f"next boot: {bootmod.UNIT_OF[mode]} ({why})")
    click.echo(f"  {bootmod.MODE_COST[mode]}")
    if mode == bootmod.HOLD:
        click.echo(f"  {bootmod.how_to_avoid_holding()}")


@boot.command("cmdline")
@kernel_option
@buffer_option
@click.option("--grub", is_flag=True, help="quoted for a GRUB linux line")
def boot_cmdline(kernel: str | None, buffer_kb: int, grub: bool) -> None:
    """Print the kernel command line words of boot-time tracing."""
    from tracer import bootline

    try:
        text = bootline.line(kernel, buffer_kb)
    except bootline.BootLineError as e:
        fail(str(e))
    click.echo(bootline.grub_quoted(text) if grub else text)


@boot.command("uninstall")
@click.option("--root", default="/", show_default=True)
def boot_uninstall(root: str) -> None:
    """Remove what install wrote; recorded traces are kept (idempotent)."""
    from tracer import boot as bootmod
    from tracer import bootline

    notice = _notice
    try:
        changed = bootmod.uninstall(root=root, notice=notice)
        changed += bootline.uninstall(root, notice)
    except (bootmod.BootError, bootline.BootLineError) as e:
        fail(str(e))
    click.echo("\n".join(f"removed {p}" for p in changed) or "not installed")
    if os.path.realpath(root) == "/" and bootline.this_boot_has_it() \
            and not bootline.installed(root):
        notice("this boot's kernel command line still has the boot-time tracing words: "
               "remove them where you added them")


@boot.command("status")
@click.option("--root", default="/", show_default=True)
def boot_status(root: str) -> None:
    """Whether the units are installed and enabled, which one the next boot runs and
    what that costs, and the recorded boots."""
    from tracer import boot as bootmod
    from tracer import bootline

    st = bootmod.status(root=root)
    for u in st["units"].values():
        click.echo(f"{u['path']}: {'installed' if u['installed'] else 'not installed'}, "
                   f"{'enabled' if u['enabled'] else 'not enabled'}"
                   + ("" if u["current"] or not u["installed"] else ", out of date"))
    click.echo("boot-time tracing: "
               + ("on this boot" if bootline.this_boot_has_it() else "not on this boot")
               + (f", GRUB drop-in {bootline.GRUB_DROPIN} installed" if bootline.installed(root)
                  else ""))
    if st["installed"]:
        _say_mode(bootmod, st["mode"], st["mode_why"])
    for w in st["warnings"]:
        click.echo(f"warning: {w}")
    if st.get("systemd"):
        click.echo(" ".join(f"{k}={v}" for k, v in st["systemd"].items()))
    for t in st["traces"]:
        click.echo(f"{t['boot']}  {t['size']:>10}  {time.ctime(t['mtime'])}  {t['path']}"
                   + ("  (this boot)" if t["this_boot"] else ""))


# -1, -2 name earlier boots: not options
@boot.command("show", context_settings={"ignore_unknown_options": True})
@click.argument("which", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--wide", is_flag=True, help="every detail, past 100 columns")
@click.option("--metrics", type=click.Path(dir_okay=False), metavar="FILE",
              help="also write the boot's figures in the Prometheus text format, for "
                   "node_exporter's textfile collector (atomically, never through a link)")
@pid_option
@module_option
@failed_option
def boot_show(which: str | None, as_json: bool, wide: bool, pid: int | None = None,
              module: str | None = None, failed_only: bool = False,
              metrics: str | None = None) -> None:
    """Report the last boot's trace, or WHICH: a boot id (prefix), 0, -1, ...

    -p, -m and -x keep the modules that pid's stories, that module's, or the duplicates
    and failures touched (as `report` does).
    """
    from tracer import boot as bootmod
    from tracer import report, reportdata

    try:
        path = bootmod.find_boot_trace(bootmod.LOG_DIR, which)
    except ValueError as e:
        fail(str(e))
    say(f"boot trace {path}", err=True)
    if metrics:
        write_metrics(str(path), metrics)
    flt = _filter(pid, module, failed_only)
    if as_json:
        show_report(str(path), as_json=True, flt=flt)
        return
    try:
        judged = reportdata.narrow(reportdata.read(str(path)), flt)
    except TraceFormatError as e:
        fail(str(e))
    for line in report.render_boot(judged, wide):
        say(line)
    say("every request and load:")
    say(f"  kmodtrace report {path}")


def write_metrics(trace_file: str, out: str) -> None:
    """`boot show --metrics`: the whole boot's figures (tracer/metrics.py), whatever the
    filters keep on screen."""
    from tracer import metrics, reportdata

    try:
        check_output(out, "metrics file", keep=trace_file)
        metrics.write(out, reportdata.read(trace_file), keep=trace_file)
    except (TraceFormatError, TraceOutputError) as e:
        fail(str(e))
    say(f"wrote {out} (Prometheus text format)", err=True)


@boot.command("diff", context_settings={"ignore_unknown_options": True})  # A may be -1
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="machine-readable diff (see README)")
@click.option("--wide", is_flag=True, help="every detail, past 100 columns")
@click.option("--slower", type=click.FloatRange(min=0), default=25.0, show_default=True,
              metavar="PCT", help="a load or span time changed by at least PCT % ...")
@click.option("--slower-ms", type=click.FloatRange(min=0), default=50.0, show_default=True,
              metavar="MS", help="... and at least MS ms counts as slower/faster")
def boot_diff(a: str, b: str, as_json: bool, wide: bool, slower: float,
              slower_ms: float) -> None:
    """Two boots per module, side by side: what appeared, disappeared, got slower.

    A and B: a trace file, or a boot as `boot show` names it (id prefix, 0, -1, ...).
    """
    from tracer import boot as bootmod
    from tracer import bootdiff

    try:  # TraceFormatError is a ValueError: a missing boot and a foreign file alike
        boot_a, boot_b = (bootdiff.load_boot(bootdiff.resolve(w, bootmod.LOG_DIR))
                          for w in (a, b))
    except ValueError as e:
        fail(str(e))
    d = bootdiff.diff(boot_a, boot_b, bootdiff.Threshold(slower, slower_ms))
    if as_json:
        click.echo(json.dumps(bootdiff.document(d), indent=1))
        return
    for line in bootdiff.render(d, wide):
        say(line)


def _add_plugin_commands(group: click.Group) -> None:
    """Commands other packages register (the lab's vm, parity, bench)."""
    from importlib.metadata import entry_points  # a costly import: only when asked for

    for ep in entry_points(group="kmodtrace.commands"):
        try:
            cmd = ep.load()
        except ImportError:  # a plugin whose own dependencies are missing: leave it out
            continue
        if isinstance(cmd, click.Command):
            group.add_command(cmd, ep.name)
