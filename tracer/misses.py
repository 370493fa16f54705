"""What the kernel skipped of our programs: each hook's misses, read at the end of a run.

Two counters, both kept by the kernel and read nowhere else:

- `recursion_misses` of struct bpf_prog_info (BPF_OBJ_GET_INFO_BY_FD): a BPF trampoline
  (fentry/fexit) does not run a program again on a CPU where that program is already
  running (bpf_prog_get_recursion_context()); on a preemptible kernel another task that
  preempted it on that CPU is skipped, and only this counter says so. Since 6.7 it also
  counts the kprobe and tracepoint programs that trace_call_bpf() skips while another
  BPF program runs on the CPU. Counted since 5.12 (9ed9e9ba2337 "bpf: Count the number
  of times recursion was prevented"); an older kernel's shorter bpf_prog_info has none.
- `nmissed` of a kprobe made through tracefs, the third column of kprobe_profile:
  returns without a kretprobe instance, and kprobe hits while another kprobe handler
  ran on the CPU. Every kprobe and kretprobe attached by name is made there
  (probes.py _attach_kprobe); the return sites' kprobes (by address, the perf kprobe
  PMU) are not, and only their program's recursion_misses is read.

The decoding is pure Python (tested); probes.py passes in the bytes and the text.
"""

from __future__ import annotations

import struct

# struct bpf_prog_info (include/uapi/linux/bpf.h): `name` at 64 (BPF_OBJ_NAME_LEN 16),
# `recursion_misses` at 208; the kernel writes back the length it filled in.
PROG_INFO_SIZE = 232
_NAME_OFF, _NAME_LEN = 64, 16
_RECURSION_MISSES_OFF = 208


def prog_misses(info: bytes, info_len: int) -> int | None:
    """recursion_misses from a bpf_prog_info the kernel filled INFO_LEN bytes of; None
    where the kernel predates the counter (5.12) and so cannot say."""
    end = _RECURSION_MISSES_OFF + 8
    if info_len < end or len(info) < end:
        return None
    return int(struct.unpack_from("<Q", info, _RECURSION_MISSES_OFF)[0])


def prog_name(info: bytes) -> str:
    """The program's name as the kernel keeps it (truncated to 15 bytes)."""
    raw = info[_NAME_OFF:_NAME_OFF + _NAME_LEN]
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def kprobe_profile(text: str, tag: str) -> dict[str, int]:
    """nmissed per probe event of kprobe_profile TEXT ("EVENT HITS MISSES" lines) whose
    name holds TAG (bcc names its events "p_FUNC_bcc_PID" / "r_FUNC_bcc_PID")."""
    missed: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and tag in parts[0] and parts[2].isdigit():
            missed[parts[0]] = missed.get(parts[0], 0) + int(parts[2])
    return missed


def kprobe_hook(event: str, tag: str) -> str:
    """The hook name ("kretprobe:do_init_module") of bcc's probe event EVENT
    ("r_do_init_module_bcc_1234"), as the trace header's hooks name it."""
    kind = {"p": "kprobe", "r": "kretprobe"}.get(event[:1], "kprobe")
    return f"{kind}:{event[2:].removesuffix(tag)}"
