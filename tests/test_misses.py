"""Each hook's misses: bpf_prog_info's recursion_misses and kprobe_profile's nmissed,
decoded as the kernel lays them out (tracer/misses.py)."""

from __future__ import annotations

import struct

from tracer import misses
from tracer.probes import Hook, _bpf_function


def _info(name: bytes, recursion_misses: int) -> bytes:
    buf = bytearray(misses.PROG_INFO_SIZE)
    buf[64:64 + len(name)] = name
    struct.pack_into("<Q", buf, 208, recursion_misses)
    return bytes(buf)


def test_recursion_misses_is_read_where_the_kernel_filled_it() -> None:
    info = _info(b"kretfunc____x64", 2)
    assert misses.prog_misses(info, misses.PROG_INFO_SIZE) == 2
    assert misses.prog_misses(info, 216) == 2
    assert misses.prog_name(info) == "kretfunc____x64"


def test_a_kernel_before_the_counter_cannot_say() -> None:
    # 5.11's bpf_prog_info ends at run_cnt (208 bytes): no recursion_misses
    assert misses.prog_misses(_info(b"req_enter", 7), 208) is None
    assert misses.prog_misses(b"\0" * 100, misses.PROG_INFO_SIZE) is None


PROFILE = """\
  r___request_module_bcc_4242                               120               3
  r_do_init_module_bcc_4242                                  10               0
  p_do_exit_bcc_4242                                        500               1
  r___request_module_bcc_999                                 50              44
  kprobes/my_probe                                            1               9
"""


def test_kprobe_profile_by_event_of_this_process_only() -> None:
    tag = "_bcc_4242"
    found = misses.kprobe_profile(PROFILE, tag)
    assert found == {"r___request_module_bcc_4242": 3, "r_do_init_module_bcc_4242": 0,
                     "p_do_exit_bcc_4242": 1}
    assert [misses.kprobe_hook(e, tag) for e in found] == [
        "kretprobe:__request_module", "kretprobe:do_init_module", "kprobe:do_exit"]
    assert misses.kprobe_profile("", tag) == {}
    assert misses.kprobe_profile("garbage line\n  r_x_bcc_4242 1 many\n", tag) == {}


def test_bpf_function_names_as_bcc_defines_them() -> None:
    assert _bpf_function(Hook("tracepoint", "module:module_load", "", "")) == \
        "tracepoint__module__module_load"
    assert _bpf_function(Hook("kretfunc", "__x64_sys_finit_module",
                              "kretfunc____x64_sys_finit_module", "")) == \
        "kretfunc____x64_sys_finit_module"
    assert _bpf_function(Hook("kprobe", "do_exit", "helper_exit", "")) == "helper_exit"
