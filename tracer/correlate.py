"""Join raw events into stories: request -> modprobe -> load attempts.

Joins, each by what the kernel guarantees:
- module:module_request and call_usermodehelper_exec run in the requesting task,
  inside __request_module: joined by thread id to the open request.
- call_usermodehelper_exec_async runs in the new helper with the sub_info pointer
  that call_usermodehelper_exec was given: joined by that pointer.
- modprobe keeps the helper's pid across exec: its (f)init_module calls are
  joined to the request by pid.
- module:module_load and do_init_module run inside the (f)init_module call: joined
  by thread id to the open load.
- a udev worker's loads are joined to the device it broadcasts next (tracer/udev.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from tracer.events import Event, Kind
from tracer.stories import STALE_NS, Load, Request
from tracer.udev import Device, device_from_properties

__all__ = ["STALE_NS", "Correlator", "Sink"]


class Sink(Protocol):
    def request_arrive(self, req: Request) -> None: ...
    def request_return(self, req: Request) -> None: ...
    def request_complete(self, req: Request) -> None: ...
    def load_start(self, load: Load) -> None: ...
    def load_complete(self, load: Load) -> None: ...
    def module_free(self, ev: Event) -> None: ...
    def device_done(self, pid: int, device: Device) -> None: ...


class Correlator:
    def __init__(self, sink: Sink, modaliases: Mapping[str, str] | None = None, *,
                 arrive_at_dup_enter: bool = False) -> None:
        self.sink = sink
        # With DUP_ENTER in the trace, a request arrives at the model there (the order of
        # kmod_dup_mutex), not at the tracepoint a few instructions before it.
        self.arrive_at_dup_enter = arrive_at_dup_enter
        # devpath -> MODALIAS, read from sysfs by the recorder while the device lived
        self.modaliases: Mapping[str, str] = modaliases if modaliases is not None else {}
        self._requests_by_tid: dict[int, Request] = {}
        self._umh_by_ptr: dict[int, Request] = {}
        self._helpers: dict[int, Request] = {}  # modprobe pid -> request
        self._loads_by_tid: dict[int, Load] = {}
        self._returned: dict[int, Request] = {}  # returned, helper still running
        self._next_id = 1
        self._last_sweep_ns = 0
        self.events = 0
        self.unjoined = 0  # events whose story we never saw begin
        self._dispatch: dict[int, Callable[[Event], None]] = {
            Kind.REQ_ENTER: self._req_enter,
            Kind.REQ_TP: self._req_tp,
            Kind.REQ_EXIT: self._req_exit,
            Kind.UMH_ENTER: self._umh_enter,
            Kind.UMH_EXIT: self._umh_exit,
            Kind.UMH_SPAWN: self._umh_spawn,
            Kind.HELPER_EXIT: self._helper_exit,
            Kind.FINIT_ENTER: self._load_enter,
            Kind.INIT_ENTER: self._load_enter,
            Kind.FINIT_EXIT: self._load_exit,
            Kind.INIT_EXIT: self._load_exit,
            Kind.MOD_LOAD: self._mod_load,
            Kind.MODINIT_ENTER: self._modinit_enter,
            Kind.MODINIT_EXIT: self._modinit_exit,
            Kind.MOD_FREE: self.sink.module_free,
            Kind.DUP_VERDICT: self._dup_verdict,
            Kind.DUP_ANNOUNCE: self._dup_announce,
            Kind.UDEV_DEVICE: self._udev_device,
            Kind.MOD_LEN: self._mod_len,
            Kind.DUP_ENTER: self._dup_enter,
            Kind.PATIENT_CHECK: self._patient_check,
        }

    def _id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def feed(self, ev: Event) -> None:
        self.feed_all((ev,))

    def feed_all(self, events: Iterable[Event]) -> None:
        """feed() each event, with the loop's names bound locally: a replay runs it a
        million times, and the method call and attribute reads per event were a tenth of
        its time."""
        dispatch, sweep = self._dispatch.get, self._sweep
        next_sweep = self._last_sweep_ns + STALE_NS
        n = 0
        for ev in events:
            n += 1
            handler = dispatch(ev.kind)
            if handler is not None:
                handler(ev)
            if ev.ts_ns > next_sweep:
                sweep(ev.ts_ns)
                next_sweep = self._last_sweep_ns + STALE_NS
        self.events += n

    @property
    def open_stories(self) -> int:
        return len(self._requests_by_tid) + len(self._loads_by_tid) + len(self._returned)

    def _sweep(self, now: int) -> None:
        self._last_sweep_ns = now
        for table in (self._requests_by_tid, self._loads_by_tid, self._returned, self._helpers,
                      self._umh_by_ptr):
            for key in [k for k, s in table.items() if now - s.start_ns > STALE_NS]:
                del table[key]

    # requests

    def _req_enter(self, ev: Event) -> None:
        req = Request(pid=ev.pid, tid=ev.tid, comm=ev.comm, ppid=ev.ppid, wait=bool(ev.wait),
                      start_ns=ev.ts_ns, fmt=ev.name, arg=ev.path, ip=ev.ip, id=self._id())
        self._requests_by_tid[ev.tid] = req

    def _req_tp(self, ev: Event) -> None:
        req = self._requests_by_tid.get(ev.tid)
        if req is None:  # tracer attached while this request was queued
            req = Request(pid=ev.pid, tid=ev.tid, comm=ev.comm, ppid=ev.ppid,
                          wait=bool(ev.wait), start_ns=ev.ts_ns, id=self._id())
            self._requests_by_tid[ev.tid] = req
            self.unjoined += 1
        req.name, req.tp_ns, req.wait = ev.name, ev.ts_ns, bool(ev.wait)
        req.ip = req.ip or ev.ip  # the entry's is right when __request_module is kretprobed
        if not self.arrive_at_dup_enter:
            self.sink.request_arrive(req)

    def _dup_enter(self, ev: Event) -> None:
        req = self._requests_by_tid.get(ev.tid)
        if req is None or req.tp_ns is None or req.dup_enter_ns is not None:
            return
        req.dup_enter_ns = ev.ts_ns
        if self.arrive_at_dup_enter:
            self.sink.request_arrive(req)

    def _req_exit(self, ev: Event) -> None:
        req = self._requests_by_tid.pop(ev.tid, None)
        if req is None:
            self.unjoined += 1
            return
        req.end_ns, req.ret = ev.ts_ns, ev.ret
        self.sink.request_return(req)
        if req.modprobe_pid is not None and req.modprobe_exit is None:
            self._returned[req.modprobe_pid] = req  # nowait: modprobe still runs
        else:
            self.sink.request_complete(req)

    def _dup_verdict(self, ev: Event) -> None:
        req = self._requests_by_tid.get(ev.tid)
        if req is not None:
            req.dup_verdict_ns = ev.ts_ns
            req.kernel_dup = bool(ev.wait)
            req.kernel_dup_ret = ev.ret if ev.wait else None

    def _dup_announce(self, ev: Event) -> None:
        # call_modprobe() announces from the requesting task, before __request_module returns
        req = self._requests_by_tid.get(ev.tid)
        if req is not None:
            req.kernel_announce_ns, req.kernel_announce_ret = ev.ts_ns, ev.ret

    def _umh_enter(self, ev: Event) -> None:
        req = self._requests_by_tid.get(ev.tid)
        if req is None:  # a helper not started by request_module (hotplug, coredump)
            return
        req.umh_path, req.umh_name, req.umh_wait = ev.path, ev.name, ev.wait
        req.umh_ptr, req.umh_start_ns = ev.ptr, ev.ts_ns
        self._umh_by_ptr[ev.ptr] = req

    def _umh_exit(self, ev: Event) -> None:
        req = self._requests_by_tid.get(ev.tid)
        if req is not None and req.umh_start_ns is not None:
            req.umh_end_ns, req.umh_ret = ev.ts_ns, ev.ret
            self._umh_by_ptr.pop(req.umh_ptr, None)

    def _umh_spawn(self, ev: Event) -> None:
        req = self._umh_by_ptr.get(ev.ptr)
        if req is None:
            return
        req.modprobe_pid = ev.pid
        self._helpers[ev.pid] = req

    def _helper_exit(self, ev: Event) -> None:
        req = self._helpers.pop(ev.pid, None)
        if req is None:
            return
        req.modprobe_exit = ev.ret
        done = self._returned.pop(ev.pid, None)
        if done is not None:
            self.sink.request_complete(done)

    # loads

    def _load_enter(self, ev: Event) -> None:
        finit = ev.kind == Kind.FINIT_ENTER
        load = Load(syscall="finit_module" if finit else "init_module", pid=ev.pid,
                    tid=ev.tid, comm=ev.comm, ppid=ev.ppid, start_ns=ev.ts_ns, file=ev.path,
                    dev=ev.dev, ino=ev.ino, size=ev.size, flags=ev.flags, id=self._id())
        req = self._helpers.get(ev.pid)
        if req is not None:
            load.request_id = req.id
            load.alias = req.display_name  # what modprobe resolved to this file
            req.load_ids += (load.id,)
        self._loads_by_tid[ev.tid] = load
        self.sink.load_start(load)

    def _load_exit(self, ev: Event) -> None:
        load = self._loads_by_tid.pop(ev.tid, None)
        if load is None:
            self.unjoined += 1
            return
        load.end_ns, load.ret = ev.ts_ns, ev.ret
        if ev.name:
            load.kernel_name = ev.name
        self.sink.load_complete(load)

    def _mod_load(self, ev: Event) -> None:
        load = self._loads_by_tid.get(ev.tid)
        if load is not None:
            load.loaded = True
            load.kernel_name = ev.name

    def _mod_len(self, ev: Event) -> None:
        load = self._loads_by_tid.get(ev.tid)
        if load is not None and ev.size:
            load.mod_len = ev.size  # info->len, what MODULE_STATS counts

    def _patient_check(self, ev: Event) -> None:
        load = self._loads_by_tid.get(ev.tid)
        if load is not None:  # FAIL_DUP_MOD_BECOMING 0, FAIL_DUP_MOD_LOAD 1 (stats.c)
            load.patient_check = "Load" if ev.flags == 1 else "Becoming"

    def _modinit_enter(self, ev: Event) -> None:
        load = self._loads_by_tid.get(ev.tid)
        if load is not None:
            load.init_start_ns = ev.ts_ns

    def _modinit_exit(self, ev: Event) -> None:
        load = self._loads_by_tid.get(ev.tid)
        if load is not None:
            load.init_end_ns, load.init_ret = ev.ts_ns, ev.ret

    # udev

    def _udev_device(self, ev: Event) -> None:
        device = device_from_properties(ev.path)
        if device is None:
            return
        if not device.modalias:
            device = replace(device, modalias=self.modaliases.get(device.devpath, ""))
        self.sink.device_done(ev.pid, device)
