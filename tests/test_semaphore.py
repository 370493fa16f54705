"""kmod_concurrent_max itself (kmodlab/semaphore.py, the parity check's model): who
passes, who queues, who times out."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest

from kmodlab.semaphore import Fate, semaphore
from tracer.model import ALL_BUSY_TIMEOUT_NS, MAX_KMOD_CONCURRENT
from tracer.stories import Request

S = 1_000_000_000
MS = 1_000_000
KMOD_C = "kernel/module/kmod.c __request_module()"

SEM = "kernel/locking/semaphore.c"


def _entered(rid: int, start: int, end: int | None, passed: bool = True) -> Request:
    """A request that entered __request_module at START; reached the tracepoint (passed)
    or returned -ETIME at END."""
    r = Request(pid=rid, tid=rid, comm="k", ppid=2, wait=True, start_ns=start, name="fs-x",
                tp_ns=start + 1 if passed else None, end_ns=end,
                ret=0 if passed else -errno.ETIME, id=rid)  # fmt: skip
    return r


@dataclass(frozen=True)
class SemCase:
    what: str
    reqs: list[Request]
    fates: dict[int, Fate]
    cite: str


N = MAX_KMOD_CONCURRENT
HOLD = [_entered(i, i * 1000, S + i) for i in range(1, N + 1)]  # 50 holders, out by S + i
SEM_CASES = [
    SemCase("a free slot: passes at once", HOLD[:1], {1: Fate(True, False, 1000)},
            f"{KMOD_C} down_timeout(&kmod_concurrent_max)"),
    SemCase("all 50 held: sleeps, passes at the first up()", [*HOLD, _entered(99, 2 * MS, 2 * S)],
            {99: Fate(True, True, S + 1)}, f"{SEM} __up(): the slot goes to the first waiter"),
    SemCase("sleepers are served in arrival order", [*HOLD, _entered(98, 2 * MS, 2 * S),
            _entered(99, 3 * MS, 2 * S)],
            {98: Fate(True, True, S + 1), 99: Fate(True, True, S + 2)},
            f"{SEM} __down_common(): list_add_tail(&waiter.list, &sem->wait_list)"),
    SemCase("no up() within 5 s: -ETIME", [*[_entered(i, i, 9 * S) for i in range(1, N + 1)],
            _entered(99, MS, MS + ALL_BUSY_TIMEOUT_NS, passed=False)],
            {99: Fate(False, True, MS + ALL_BUSY_TIMEOUT_NS)},
            f"{KMOD_C} MAX_KMOD_ALL_BUSY_TIMEOUT * HZ"),
]  # fmt: skip


@pytest.mark.parametrize("c", SEM_CASES, ids=[c.what for c in SEM_CASES])
def test_kmod_semaphore(c: SemCase) -> None:
    fates = semaphore(c.reqs)
    assert {i: fates[i] for i in c.fates} == c.fates, c.cite


def test_requests_stopped_before_the_semaphore_take_no_slot() -> None:
    """__request_module(): -ENAMETOOLONG and an LSM's refusal return before down()."""
    early = Request(pid=7, tid=7, comm="k", ppid=2, wait=True, start_ns=5, name="",
                    end_ns=6, ret=-errno.ENAMETOOLONG, id=777)  # fmt: skip
    fates = semaphore([*HOLD[:-1], early, _entered(99, 2 * MS, 2 * S)])
    assert 777 not in fates and fates[99] == Fate(True, False, 2 * MS), KMOD_C
