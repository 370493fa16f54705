"""The tracing loop shared by `live` and `record`: attach, stream, judge, summarise."""

from __future__ import annotations

import bisect
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from operator import attrgetter
from typing import IO, Any

from tracer import btf, bymodule, early, kernel, report, reportdata, requester, udev
from tracer.boot import start_timeout_extender
from tracer.errors import TracerError
from tracer.events import Event, Kind
from tracer.kernel import announce_form
from tracer.ksyms import KernelSymbols
from tracer.model import LoadVerdict, RequestVerdict
from tracer.options import Options, check_options
from tracer.probes import Attached, Tracer
from tracer.record import Procs, TraceWriter, make_header, open_output
from tracer.reportdata import Filter
from tracer.session import Judge, judge_correlator
from tracer.stories import Load, Request
from tracer.text import shown

# Events from different CPUs reach the ring buffer slightly out of order; hold
# each this long and release in timestamp order.
REORDER_NS = 20_000_000
# The ring buffer is read on this timer. The BPF program submits without waking the
# reader (BPF_RB_NO_WAKEUP): a wakeup per record, which the kernel otherwise sends each
# time the reader has caught up, cost the traced storm an irq_work per event and the
# reader a pass of this loop (and a write(2)) per event (issue #14).
TICK_S = 0.1
MAX_PROCS = 100_000
# Where a requester or loader first shows up: describe it while it still lives.
_STARTS = frozenset({Kind.REQ_ENTER, Kind.FINIT_ENTER, Kind.INIT_ENTER})
_TS_WIDTH = len("HH:MM:SS.mmm ")  # -T's prefix


def sd_notify(message: str) -> None:
    """Tell systemd we are ready (Type=notify); a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


def _kernel_btf() -> btf.BTF | None:
    try:
        return btf.load()
    except btf.BTFError:
        return None


class Reorder:
    """Events as the ring buffer hands them over, released in timestamp order.

    Kept in arrival order and sorted at release: arrival is nearly timestamp order (CPUs
    disagree by little), which Python's sort takes in about one pass. `push` is the list's
    own append, called from C for every record; a heap cost a tuple, a sequence number and
    two sifts per event (issue #14)."""

    def __init__(self) -> None:
        self._pending: list[Event] = []
        self.push = self._pending.append
        self._newest_ns = 0

    def _sort(self) -> None:
        pending = self._pending
        pending.sort(key=_TS)  # stable: equal stamps keep their arrival order
        if pending and pending[-1].ts_ns > self._newest_ns:
            self._newest_ns = pending[-1].ts_ns

    @property
    def newest_ns(self) -> int:
        """The latest timestamp pushed."""
        self._sort()
        return self._newest_ns

    def pop_until(self, upto_ns: int | None) -> list[Event]:
        """Events up to upto_ns (every one if None), oldest first."""
        self._sort()
        pending = self._pending
        cut = len(pending) if upto_ns is None else bisect.bisect_right(pending, upto_ns,
                                                                         key=_TS)
        out = pending[:cut]
        del pending[:cut]
        return out

    def pending(self) -> list[Event]:
        return list(self._pending)


_TS = attrgetter("ts_ns")


def start(opts: Options, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr,
          tracer: Tracer | None = None) -> Run:
    """Attach the probes and return a Run ready to trace; TracerError or TraceOutputError
    (one line each) if it cannot. TRACER: one whose begin() already started compiling."""
    check_options(opts)
    reorder = Reorder()
    if tracer is None:
        tracer = Tracer(reorder.push, notice=lambda m: print(shown(m), file=err))
    tracer.on_event = reorder.push
    # under systemd: more start time while bcc compiles and the kernel attaches
    with start_timeout_extender(sd_notify, log=lambda m: print(shown(m), file=err)):
        attached = tracer.attach()
    # What start-up made (modules, bcc, the compiled program's tables) lives as long as
    # the process: out of the collector's way, so its full passes scan only the stories.
    gc.freeze()
    window = (tracer.begin_ns, time.monotonic_ns())
    try:
        writer = TraceWriter(opts.output) if opts.output else None
    except BaseException:
        tracer.close()
        raise
    return Run(opts, tracer, attached, reorder, writer, out, err, window)


class Run:
    """One tracing session, complete when built: attached probes, the judge, the writer.

    start() makes one; run() traces until the end condition and prints the summary.
    """

    def __init__(self, opts: Options, tracer: Tracer, attached: Attached, reorder: Reorder,
                 writer: TraceWriter | None, out: IO[str] = sys.stdout,
                 err: IO[str] = sys.stderr, window: tuple[int, int] | None = None) -> None:
        self.opts, self.out, self.err = opts, out, err
        # when attaching began and ended (CLOCK_MONOTONIC): the early trace's seam
        now = time.monotonic_ns()
        self.window = window or (now, now)
        self._early: set[int] = set()  # id() of drained events not yet released
        self.filter = Filter(opts.pid, opts.module, opts.failed_only)
        self.tracer, self.attached, self.reorder = tracer, attached, reorder
        self.writer = writer  # None: not recording
        self.features = attached.features if opts.announce is None else \
            attached.features.with_announce(announce_form(opts.announce))
        self.judge = Judge(self.features.profile, self._show_request, self._show_load)
        self.by_module = bymodule.ByModule()  # the exit summary's rows
        self.modaliases: dict[str, str] = {}  # devpath -> MODALIAS, from sysfs
        # built as replay builds it: a replay of this trace gives the same verdicts
        self.correlator = judge_correlator(self.judge, attached.hook_names(), self.modaliases)
        if writer is not None:
            writer.write(make_header(
                self.features.to_dict(), attached.hook_names(),
                [f"{h.name}: {why}" for h, why in attached.skipped]))
            writer.flush()
        self._stop = False
        self.t0_ns = time.monotonic_ns()
        self.shown = 0
        self.stop_reason = ""
        self.ksyms: dict[int, str] = {}  # call sites, resolved while kallsyms is ours to read
        self._reloaded: set[int] = set()  # call sites in a module loaded since they were named
        self.kallsyms = KernelSymbols()
        # (pid, comm) -> (cmdline, parent chain), read while the process lives
        self.procs: Procs = {}

    def drain_early(self) -> None:
        """Merge what the kernel recorded before the probes were attached (boot-time
        tracing, `kmodtrace boot install`): those events first, each event once."""
        root = kernel.tracefs()
        if not self.opts.early or root is None:
            return
        time.sleep(0.05)  # BPF events of the attach window still in flight land
        self.tracer.drain()
        try:
            with open("/proc/cmdline") as f:
                cmdline = f.read()
        except OSError:
            cmdline = ""
        drained = early.drain(root, *self.window, self.reorder.pending(), _kernel_btf,
                              cmdline, self.kallsyms.address_of)
        if drained.info.get("probes"):
            drained.info["switched_off"] = early.probes_off(root)
        for ev in drained.events:
            self._early.add(id(ev))
            self.reorder.push(ev)
        if self.writer is not None:
            self.writer.write({"type": "early", **drained.info})
        if drained.info.get("configured") or drained.info.get("probes"):
            print(shown(early.summary(drained.info)), file=self.err)  # silent where not asked for

    def _release(self, upto_ns: int | None) -> None:
        events = self.reorder.pop_until(upto_ns)
        early_ids, writer = self._early, self.writer
        for ev in events:
            kind = ev.kind
            is_early = bool(early_ids) and id(ev) in early_ids
            if is_early:
                early_ids.discard(id(ev))
            if kind == Kind.MOD_LOAD:
                self.kallsyms.invalidate()  # its symbols are new
                if not is_early:
                    self._watch_module(ev.name)
            elif kind == Kind.REQ_ENTER and (ev.ip not in self.ksyms or ev.ip in self._reloaded):
                # module code is named now, while loaded; core code at the end
                self.ksyms[ev.ip] = self.kallsyms.module_of(ev.ip) or ""
                self._reloaded.discard(ev.ip)
                self.tracer.watch_site(ev.ip)  # a new call site: see its returns
            # kthreadd's children (pid 2) have no cmdline to read: skipping them keeps a
            # kernel-thread storm from costing a /proc walk per thread
            # an early event's process is long gone, and its pid may be another's now;
            # its device is mostly still there (early ones too: the boot-time trace's)
            if kind == Kind.UDEV_DEVICE:
                self._describe_device(ev)
            elif is_early:
                pass
            elif kind in _STARTS and ev.ppid != 2 and (ev.pid, ev.comm) not in self.procs:
                self._describe(ev)
            if writer is not None:
                writer.event(ev, early=is_early)
        # after the loop: what the stories show (processes, call sites) is read by then
        self.correlator.feed_all(events)

    def _watch_module(self, name: str) -> None:
        """A module just loaded, its init not yet run: watch its calls' returns now. Call
        sites named in its range were another module's, gone since: named again if a
        request comes from there (the trace's names are those of the last caller)."""
        where = self.kallsyms.module_range(name)
        if where is None:
            return
        base, size = where
        self._reloaded.update(ip for ip in self.ksyms if base <= ip < base + size)
        self.tracer.watch_module(base, size)

    def _describe(self, ev: Event) -> None:
        if len(self.procs) > MAX_PROCS:
            self.procs.clear()
        cmdline, parents = self.procs[(ev.pid, ev.comm)] = requester.describe(ev.pid)
        if self.writer is not None:
            self.writer.proc(ev.pid, ev.comm, cmdline, parents)

    def _describe_device(self, ev: Event) -> None:
        """The MODALIAS udev looked up is too long for the event: read it from sysfs
        while the device is there, for the trace and the correlator."""
        devpath = udev.parse_properties(ev.path).get("DEVPATH")
        if not devpath or devpath in self.modaliases:
            return
        if len(self.modaliases) > MAX_PROCS:
            self.modaliases.clear()
        modalias = self.modaliases[devpath] = udev.read_modalias(devpath)
        if self.writer is not None:
            self.writer.device(devpath, modalias)

    def _show_request(self, req: Request, v: RequestVerdict | None) -> None:
        self.by_module.add_request(req, v)
        if self.opts.quiet or not self.filter.request(
                req, v, self.by_module.modules_of(req.display_name)):
            return
        self.shown += 1
        if self.opts.json:
            d = report.request_json(req, v, {k: n for k, n in self.ksyms.items() if n})
            d |= report.proc_json(self.procs, req.pid, req.comm)
            self.out.write(json.dumps(d) + "\n")
        else:
            ts = self._ts(req.start_ns)
            self.out.write(shown(ts + report.request_line(
                req, v, self.t0_ns, self.opts.wide, report.LINE_WIDTH - len(ts))) + "\n")
        self.out.flush()

    def _show_load(self, load: Load, v: LoadVerdict | None) -> None:
        self.by_module.add_load(load, v)
        if self.opts.quiet or not self.filter.load(load, v):
            return
        self.shown += 1
        if self.opts.json:
            d = report.load_json(load, v) | report.proc_json(self.procs, load.pid, load.comm)
            self.out.write(json.dumps(d) + "\n")
        else:
            ts = self._ts(load.start_ns)
            self.out.write(shown(ts + report.load_line(
                load, v, self.t0_ns, self.opts.wide, report.LINE_WIDTH - len(ts))) + "\n")
        self.out.flush()

    def _ts(self, mono_ns: int) -> str:
        if not self.opts.timestamps:
            return ""
        wall = time.time() - (time.monotonic_ns() - mono_ns) / 1e9
        return (time.strftime("%H:%M:%S", time.localtime(wall))
                + f".{int(wall * 1000) % 1000:03d} ")

    def _on_signal(self, _sig: int, _frame: Any) -> None:
        self._stop = True

    def run(self) -> int:
        attached, features = self.attached, self.features
        # Ctrl-C too sets a flag: a KeyboardInterrupt raised inside bcc's ring-buffer
        # callback is swallowed by ctypes, and the recorder would never stop.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        print(f"Attached {len(attached.hooks)} hooks in {attached.attach_s:.2f}s "
              f"(kernel {features.release}, profile {features.profile.name}, "
              f"{attached.build} build).", file=self.err)
        if self.opts.ready_file:
            with os.fdopen(open_output(self.opts.ready_file, "ready file"), "w") as f:
                f.write(f"{attached.attach_s:.3f}\n")
        self.drain_early()
        sd_notify("READY=1")
        try:
            child = subprocess.Popen(self.opts.command) if self.opts.command else None
        except OSError as e:
            self.tracer.close()
            raise TracerError(f"cannot run {self.opts.command[0]}: {e.strerror}") from e
        if not self.opts.quiet and not self.opts.json:
            what = "until the command exits" if child else "Hit Ctrl-C to end"
            print(f"Tracing module requests and loads... {what}.", file=self.err)
            ts = f"{'TIME':<{_TS_WIDTH}}" if self.opts.timestamps else ""
            self.out.write(ts + report.header(self.opts.wide) + "\n")
        deadline = None if self.opts.duration is None else time.monotonic() + self.opts.duration
        watcher = None
        if self.opts.until_settled is not None:
            from tracer.boot import SettleWatcher  # imported here: boot tracing only

            watcher = SettleWatcher(self.opts.until_settled)
        status = 0
        try:
            while not self._stop:
                time.sleep(TICK_S)
                self._pump()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if child is not None and child.poll() is not None:
                    status = child.returncode
                    break
                if watcher is not None and watcher.poll():
                    self.stop_reason = watcher.reason or "settled"
                    break
        except KeyboardInterrupt:
            pass
        finally:
            self._finish(child)
        return status

    def _pump(self) -> None:
        """What the ring buffer holds, batch by batch (Tracer.batch records): each released
        as far as is safe, and written, before the next is taken. A storm's backlog never
        sits decoded whole in memory, and a kill -9 loses at most one batch."""
        more = self.tracer.consume()
        while True:
            if more:
                # Stopped short, the ring still holds records, reserved after those taken:
                # none is older than the newest taken less the window (the window's own
                # assumption), so those older go; the clock tells nothing here.
                self._release(self.reorder.newest_ns - REORDER_NS - 1)
            else:
                self._release(time.monotonic_ns() - REORDER_NS)
            if self.writer is not None:
                self.writer.flush()  # one write(2) per batch
            if not more or self._stop:
                return
            more = self.tracer.consume()

    def _finish(self, child: subprocess.Popen[bytes] | None) -> None:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait()
        time.sleep(0.2)  # let in-flight events of the last calls land
        self.tracer.drain()
        self._release(None)
        self.judge.flush()  # udev loads whose device broadcast never came
        misses = self.tracer.misses()
        lost, missed = self.tracer.lost(), self.tracer.missed(misses)
        for ip, name in self.ksyms.items():
            if not name:
                self.ksyms[ip] = self.kallsyms.core(ip)
        # "misses": which hook skipped how many runs (those in "missed", rescues aside)
        end_ns = time.monotonic_ns()
        trailer = {"lost": lost, "missed": missed, "misses": misses,
                   "events": self.correlator.events,
                   "end_mono_ns": end_ns,
                   "ksyms": {hex(k): v for k, v in self.ksyms.items()},
                   "rescue": dict(zip(("emitted", "seen_too", "wrong"),
                                      self.tracer.rescued(), strict=True)),
                   "return_sites": [hex(a) for a in self.tracer.sites()],
                   "scanned_sites": [hex(a) for a in self.tracer.scanned_sites()],
                   "stop_reason": self.stop_reason}
        if self.writer is not None:
            self.writer.close(trailer)
        self.tracer.close()
        self.print_summary(reportdata.from_live(
            self.features, self.judge.model.modules(), self.by_module.rows(),
            reportdata.Loss(self.correlator.events, lost, missed, misses, True, 0, None,
                            self.judge.model.stats().len_unknown),
            self.window, end_ns, self.by_module.unnamed()))

    def print_summary(self, r: reportdata.Report) -> None:
        """Live's exit summary: a rendering of its Report, to stderr."""
        if self.filter.module is not None:
            r = reportdata.only_module(r, self.filter.module)
        loss, err = r.loss, self.err
        print(f"\n{loss.events} events, {loss.lost} lost, {loss.missed} missed probes.",
              file=err)
        for line in report.hook_lines(loss):
            print(shown(line), file=err)
        if r.by_module:
            for line in report.module_summary(r, self.opts.wide):
                print(shown(line), file=err)
        for line in report.warning_lines(loss):
            print(line, file=err)
