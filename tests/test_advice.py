"""Cause and advice per repeated module (issue #28, item 1): exact verdicts for each
pattern, built from small stories, and what the advice says on a recorded udev coldplug."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from tracer import advice, bymodule, report, reportdata
from tracer.advice import Advice, Savings
from tracer.kernel import Features
from tracer.model import LoadVerdict, RequestVerdict
from tracer.stories import Load, Request
from tracer.udev import Device

DATA = Path(__file__).parent / "data"
K61 = Features("6.1.0-test", dups=False, dups_deferred=False, idempotent=False,
               patient=False, module_stats=False)
K612 = Features("6.12.0-test", dups=False, dups_deferred=False, idempotent=True,
                patient=True, module_stats=False)
CPU_ALIAS = "cpu:type:x86,ven0002fam000Fmod006B:feature:,0000,00C2,00E8"
# Lines of Debian 6.1.0-57-amd64's modules.alias and modules.dep
ALIAS = """\
# Aliases extracted from modules themselves.
alias cpu:type:x86,ven*fam*mod*:feature:*00C2* kvm_amd
alias cpu:type:x86,ven*fam*mod*:feature:*00E8* acpi_cpufreq
alias acpi*:LNXCPU:* acpi_cpufreq
alias acpi*:LNXCPU:* pcc_cpufreq
alias cpu:type:x86,ven0002fam000Fmod*:feature:* amd64_edac
alias fs-minix minix
"""
DEP = """\
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko \
kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/drivers/edac/edac_mce_amd.ko:
kernel/drivers/edac/amd64_edac.ko: kernel/drivers/edac/edac_mce_amd.ko
"""

Judged = tuple[Load, LoadVerdict]


@pytest.fixture
def modules_dir(tmp_path: Path) -> str:
    (tmp_path / "modules.alias").write_text(ALIAS)
    (tmp_path / "modules.dep").write_text(DEP)
    return str(tmp_path)


def _load(i: int, module: str, ret: int, *, cpu: int | None = None, modalias: str = CPU_ALIAS,
          size: int = 1000, wasted: int = 0, init_ret: int | None = None,
          converged: bool = False, would_converge: bool = False, request_id: int | None = None,
          comm: str = "(udev-worker)", syscall: str = "finit_module") -> Judged:
    ld = Load(syscall, pid=100 + i, tid=100 + i, comm=comm, ppid=1,
              start_ns=1_000_000_000 + i * 1_000_000, end_ns=1_010_000_000 + i * 1_000_000,
              ret=ret, file=f"{module}.ko", ino=77, dev=3, size=size, kernel_name=module,
              loaded=init_ret is not None, init_ret=init_ret, request_id=request_id,
              alias="" if request_id is None else "fs-minix", id=i)
    if cpu is not None:
        ld.device = Device(f"/devices/system/cpu/cpu{cpu}", "cpu", "add", modalias)
    outcome = "loaded" if ret == 0 else errno.errorcode.get(-ret, str(ret))
    return ld, LoadVerdict(i, module, syscall, ret, outcome, None, wasted, None,
                           would_converge, wasted if would_converge else 0,
                           converged=converged)


def _request(i: int, name: str, verdict: str, saved: bool = False,
             ip: int = 0xFFFF0001) -> tuple[Request, RequestVerdict]:
    q = Request(pid=500 + i, tid=500 + i, comm="mount", ppid=1, wait=True,
                start_ns=900_000_000 + i, name=name, ip=ip, tp_ns=900_000_100 + i,
                end_ns=990_000_000, ret=0, modprobe_pid=700 + i, modprobe_exit=0,
                load_ids=(i,), id=i)
    return q, RequestVerdict(i, name, True, verdict, q.tp_ns,  # type: ignore[arg-type]
                             modprobe_saved=saved)


def _report(loads: Sequence[Judged], requests: Sequence[tuple[Request, RequestVerdict]] = (),
            features: Features = K61) -> reportdata.Report:
    rows = bymodule.join(requests, loads)
    return reportdata.Report(
        kernel=features.release, boot_id=None, cpus=16, features=features,
        requests=tuple(requests), loads=tuple(loads), modules={}, by_module=rows,
        loading=reportdata.loading(rows, 0, 0, 0, 0),
        loss=reportdata.Loss(0, 0, 0, {}, True, 0, None), procs={},
        ksyms={0xFFFF0001: "get_fs_type+0x6f"}, early=None, early_events=0)


def _advice(r: reportdata.Report, modules_dir: str) -> list[Advice]:
    return list(advice.build(r, modules_dir).items)


BLACKLIST = ("blacklist {m} on this machine: a line `blacklist {m}` in /etc/modprobe.d/, or "
             "`modprobe.blacklist={m}` on the kernel command line; libkmod then skips the "
             "alias load before reading the file (not `module_blacklist={m}`: the kernel "
             "refuses that only after the read, which saves nothing)")


def test_init_fails_while_racers_get_ebusy_gives_a_blacklist(modules_dir: str) -> None:
    """acpi_cpufreq on 16 CPUs, four here: one init fails ENODEV, the racers EBUSY."""
    loads = [_load(0, "acpi_cpufreq", -errno.ENODEV, cpu=0, init_ret=-errno.ENODEV)]
    loads += [_load(i, "acpi_cpufreq", -errno.EBUSY, cpu=i, wasted=1000) for i in (1, 2, 3)]
    [a] = _advice(_report(loads), modules_dir)
    assert a == Advice(
        module="acpi_cpufreq", patterns=("init-fails-racers-ebusy",),
        cause=(f"udev: 4 device(s) (cpu:4), MODALIAS {CPU_ALIAS} matched modules.alias "
               "`cpu:type:x86,ven*fam*mod*:feature:*00E8*`",),
        kind="blacklist", text=BLACKLIST.format(m="acpi_cpufreq"),
        facts=("4 load attempt(s): 0 loaded, failed EBUSY:3,ENODEV:1",
               "init returned ENODEV:1 on 1 attempt(s) (the module was formed, its init "
               "failed); 3 attempt(s) racing with it got EBUSY (found it GOING)",
               "not one attempt loaded it: it never bound on this machine (kernel "
               "6.1.0-test)",
               "4 of the 4 attempts were alias lookups (udev's MODALIAS or a kernel "
               "request's alias), which libkmod's blacklist stops"),
        savings=Savings(attempts=4, read_bytes=4000, wasted_bytes=3000, load_ns=40_000_000),
        targets=("acpi_cpufreq",))
    assert a.to_json()["savings"] == {"attempts": 4, "read_bytes": 4000, "wasted_bytes": 3000,
                                      "load_ns": 40_000_000, "modprobe_spawns": 0}


def test_a_dependency_that_never_binds_blacklists_the_module_the_lookup_matched(
        modules_dir: str) -> None:
    """edac_mce_amd's init fails; udev's lookup matched amd64_edac, which needs it, and
    libkmod checks the blacklist of the looked-up module, not of its dependencies."""
    loads = [_load(0, "edac_mce_amd", -errno.ENODEV, cpu=0, init_ret=-errno.ENODEV),
             _load(1, "edac_mce_amd", -errno.EBUSY, cpu=1, wasted=1000)]
    [a] = _advice(_report(loads), modules_dir)
    assert a.kind == "blacklist"
    assert a.cause == (f"udev: 2 device(s) (cpu:2), MODALIAS {CPU_ALIAS} matched "
                       "`cpu:type:x86,ven0002fam000Fmod*:feature:*` of amd64_edac, which "
                       "depend(s) on edac_mce_amd (modules.dep): loaded as a dependency",)
    assert a.text == BLACKLIST.format(m="amd64_edac")
    assert a.targets == ("amd64_edac",)
    assert a.facts[-1] == ("udev's lookups matched amd64_edac, which need(s) edac_mce_amd "
                           "(modules.dep); libkmod checks the blacklist of the module a lookup "
                           "resolved to, not of its dependencies")


def test_same_errno_everywhere_converged_by_idempotent(modules_dir: str) -> None:
    """6.5+: the waiters of a failing winner fail with its errno and read nothing."""
    loads = [_load(0, "acpi_cpufreq", -errno.ENODEV, cpu=0, init_ret=-errno.ENODEV)]
    loads += [_load(i, "acpi_cpufreq", -errno.ENODEV, cpu=i, converged=True)
              for i in (1, 2, 3)]
    [a] = _advice(_report(loads, features=K612), modules_dir)
    assert (a.patterns, a.kind) == (("same-errno", "converged"), "blacklist")
    assert a.facts[:2] == ("4 load attempt(s): 0 loaded, failed ENODEV:4",
                           "3 attempt(s) waited in idempotent() for the first one and read "
                           "nothing")
    assert a.savings == Savings(attempts=4, read_bytes=1000, wasted_bytes=0,
                                load_ns=40_000_000)


def test_per_device_alias_racing_with_itself_gives_a_preload(modules_dir: str) -> None:
    """kvm on every CPU: kvm_amd's pattern matched, kvm came in as its dependency."""
    loads = [_load(0, "kvm", 0, cpu=0)]
    loads += [_load(i, "kvm", -errno.EEXIST, cpu=i, wasted=2000, would_converge=i < 3)
              for i in (1, 2, 3)]
    [a] = _advice(_report(loads), modules_dir)
    assert a == Advice(
        module="kvm", patterns=("per-device-alias",),
        cause=(f"udev: 4 device(s) (cpu:4), MODALIAS {CPU_ALIAS} matched "
               "`cpu:type:x86,ven*fam*mod*:feature:*00C2*` of kvm_amd, which depend(s) on "
               "kvm (modules.dep): loaded as a dependency",),
        kind="preload",
        text="load kvm once, early: a line `kvm` in /etc/modules-load.d/kvm.conf, with "
             "systemd-modules-load.service ordered before systemd-udev-trigger.service (a "
             "drop-in with `Before=systemd-udev-trigger.service`: they are not ordered by "
             "default), so that udev's later lookups find it live and load nothing",
        facts=("4 load attempt(s): 1 loaded, failed EEXIST:3",
               "4 devices asked for it; 3 of their loads read the file and got EEXIST (it "
               "was loaded already)",
               "kernel 6.1.0-test has no idempotent() (6.5+): concurrent finit_module calls "
               "of one file each read it",
               "a kernel with idempotent() would have converged 2 of them (3.9KiB of "
               "MODULE_STATS bytes)"),
        savings=Savings(attempts=3, read_bytes=3000, wasted_bytes=6000, load_ns=30_000_000),
        targets=("kvm",))


def test_a_dependency_racing_is_preloaded_through_the_module_that_pulls_it(
        modules_dir: str) -> None:
    loads = [_load(i, m, 0 if i % 3 == 0 else -errno.EEXIST, cpu=i % 3, wasted=10)
             for i, m in enumerate(["kvm"] * 3 + ["kvm_amd"] * 3)]
    kvm, kvm_amd = _advice(_report(loads), modules_dir)
    assert (kvm.module, kvm.kind, kvm_amd.module, kvm_amd.kind) == (
        "kvm", "preload", "kvm_amd", "preload")
    assert kvm.text.startswith("load kvm_amd once, early: a line `kvm_amd` in "
                               "/etc/modules-load.d/kvm_amd.conf, ")
    assert kvm.facts[-1] == ("udev's lookups matched kvm_amd, which need(s) kvm "
                             "(modules.dep) and loaded: preloading kvm_amd loads kvm too")
    assert kvm_amd.text.startswith("load kvm_amd once, early: ")
    assert (kvm.targets, kvm_amd.targets) == (("kvm_amd",), ("kvm_amd",))


def test_racers_cut_by_a_signal_are_racers_too(modules_dir: str) -> None:
    """6.1: a load that finds the module COMING waits for it, interruptibly; udev killing
    its worker past the event timeout ends that wait with -ERESTARTSYS (kvm_amd on 16
    emulated CPUs)."""
    loads = [_load(i, "kvm_amd", 0 if i == 0 else -512, cpu=i) for i in range(3)]
    [a] = _advice(_report(loads), modules_dir)
    assert (a.patterns, a.kind, a.targets) == (("per-device-alias",), "preload", ("kvm_amd",))
    assert a.facts[:2] == ("3 load attempt(s): 1 loaded, failed -512:2",
                           "3 devices asked for it; 2 read it and were interrupted "
                           "(ERESTARTSYS:2: a signal cut their wait for the first load to "
                           "finish)")


def test_init_module_loads_are_not_converged_by_idempotent(modules_dir: str) -> None:
    """Debian's 6.12: kmod decompresses .ko.xz itself and calls init_module()."""
    loads = [_load(i, "kvm", 0 if i == 0 else -errno.EEXIST, cpu=i, syscall="init_module")
             for i in range(3)]
    [a] = _advice(_report(loads, features=K612), modules_dir)
    assert a.kind == "preload"
    assert a.facts[2] == ("the loads were init_module calls (kmod decompressing the module "
                          "itself), which idempotent() does not converge")


def test_converged_repeats_need_no_advice(modules_dir: str) -> None:
    loads = [_load(0, "kvm_amd", 0, cpu=0)]
    loads += [_load(i, "kvm_amd", 0, cpu=i, converged=True) for i in (1, 2, 3)]
    [a] = _advice(_report(loads, features=K612), modules_dir)
    assert a == Advice(
        module="kvm_amd", patterns=("converged",),
        cause=(f"udev: 4 device(s) (cpu:4), MODALIAS {CPU_ALIAS} matched modules.alias "
               "`cpu:type:x86,ven*fam*mod*:feature:*00C2*`",),
        kind="none",
        text="no advice applies: the kernel converged the repeats already: they read nothing",
        facts=("4 load attempt(s): 4 loaded",
               "3 attempt(s) waited in idempotent() for the first one and read nothing"),
        savings=None)


def test_kernel_caller_asking_repeatedly(modules_dir: str) -> None:
    """Three mounts at once: get_fs_type asks for fs-minix three times."""
    reqs = [_request(0, "fs-minix", "first"), _request(1, "fs-minix", "duplicate", True),
            _request(2, "fs-minix", "duplicate", True)]
    loads = [_load(0, "minix", 0, request_id=0, comm="modprobe"),
             _load(1, "minix", -errno.EEXIST, request_id=1, comm="modprobe", wasted=500,
                   would_converge=True),
             _load(2, "minix", -errno.EEXIST, request_id=2, comm="modprobe", wasted=500)]
    [a] = _advice(_report(loads, reqs), modules_dir)
    assert a == Advice(
        module="minix", patterns=("kernel-caller-repeats",),
        cause=("kernel: 3 request(s) for fs-minix from get_fs_type+0x6f (by mount:3); "
               "modprobe exit 0:3",),
        kind="kernel-caller",
        text="the kernel asks from get_fs_type: check before asking, as "
             "try_then_request_module() does; or run a kernel with dups.c "
             "(CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS), which runs one modprobe for concurrent "
             "requests of one name; or run a kernel with idempotent() (6.5+), which makes "
             "concurrent finit_module calls of one file wait instead of reading it",
        facts=("get_fs_type+0x6f asked for fs-minix 3 times",
               "3 modprobe helper(s) ran for these requests",
               "a kernel with dups.c (CONFIG_MODULE_DEBUG_AUTOLOAD_DUPS, 6.4+) would have "
               "judged 2 of them duplicates and run 2 fewer modprobe(s)",
               "2 of their modprobes' loads read the file and got EEXIST; idempotent() "
               "(6.5+) would have converged 1",
               "modprobe exit 0:3"),
        savings=Savings(attempts=2, read_bytes=2000, wasted_bytes=1000, load_ns=20_000_000,
                        modprobe_spawns=2))


def test_user_space_repeats_get_no_advice_and_say_why(modules_dir: str) -> None:
    """8 concurrent `modprobe xfs`: nobody's alias, no kernel caller."""
    loads = [_load(i, "xfs", 0 if i == 0 else -errno.EEXIST, comm="modprobe")
             for i in range(3)]
    [a] = _advice(_report(loads), modules_dir)
    assert (a.patterns, a.kind, a.savings) == ((), "none", None)
    assert a.cause == ("user space: 3 load(s) neither udev's nor a request's (by modprobe:3)",)
    assert a.text == ("no advice applies: its repeats were not udev's per-device lookups nor "
                      "a repeating kernel caller: whoever ran them has to stop")


def test_a_module_tried_once_gets_no_advice(modules_dir: str) -> None:
    assert _advice(_report([_load(0, "kvm", 0, cpu=0)]), modules_dir) == []


def test_missing_modules_alias_is_said(tmp_path: Path) -> None:
    loads = [_load(i, "kvm", 0 if i == 0 else -errno.EEXIST, cpu=i) for i in range(2)]
    a = advice.build(_report(loads), str(tmp_path / "nowhere"))
    assert not a.alias_found
    assert a.items[0].cause[0].endswith(
        f"(pattern not resolved: {tmp_path}/nowhere/modules.alias not there)")
    text = advice.lines(a, wide=True)
    assert f"{tmp_path}/nowhere/modules.alias is not there: udev's MODALIAS patterns are not " \
           "resolved" in text


@pytest.mark.parametrize(("pattern", "name", "hit"), [
    ("acpi*:LNXCPU:*", "acpi:LNXCPU:", True),
    ("pci:v00008086d*sv*", "pci:v00008086d00001234sv0000", True),
    ("pci:v00008086d*sv*", "pci:v00001022d00001234sv0000", False),
    ("usb:v?d", "usb:vXd", True),
    ("usb:v[!0-9]d", "usb:v5d", False),
    ("usb:v[^0-9]d", "usb:vAd", True),  # glibc's fnmatch negates with ^ too
    ("usb:v[]]d", "usb:v]d", True),
    ("of:N*T*C\\*", "of:NfooTbarC*", True),
    ("of:N*T*C\\*", "of:NfooTbarCx", False),
    ("a[b", "a[b", True),  # an unclosed bracket is a literal
])
def test_fnmatch_as_kmod_uses_it(pattern: str, name: str, hit: bool) -> None:
    assert bool(advice.fnmatch_regex(pattern).fullmatch(name)) is hit


def test_text_and_json_carry_the_advice(modules_dir: str) -> None:
    loads = [_load(0, "acpi_cpufreq", -errno.ENODEV, cpu=0, init_ret=-errno.ENODEV),
             _load(1, "acpi_cpufreq", -errno.EBUSY, cpu=1, wasted=1000)]
    r = _report(loads)
    text = report.render_text(r) + report.render_boot(r)
    assert sum(line.startswith("  advice (blacklist): blacklist acpi_cpufreq") for line in text) \
        == 2
    assert all(len(line) <= report.LINE_WIDTH for line in text)
    doc = report.document(r)
    assert [(e["module"], e["kind"], e["pattern"]) for e in doc["advice"]] == [
        ("acpi_cpufreq", "blacklist", ["init-fails-racers-ebusy"])]
    assert set(doc["advice"][0]) == {"module", "pattern", "cause", "kind", "advice",
                                     "targets", "facts", "savings"}


def test_recorded_udev_coldplug(modules_dir: str) -> None:
    """`udevadm trigger` on Debian 6.1, 2 vCPUs (tests/data/vm-6.1-udev): every repeated
    module is a CPU driver whose init fails ENODEV while the other worker gets EBUSY, so
    each is advised a blacklist, with what it would save."""
    r = reportdata.read(str(DATA / "vm-6.1-udev" / "trace.jsonl"))
    a = advice.build(r, modules_dir)
    got = {x.module: (x.patterns, x.kind, x.savings.attempts if x.savings else None,
                      x.savings.wasted_bytes if x.savings else None) for x in a.items}
    rows = r.by_module
    assert got == {m: (("init-fails-racers-ebusy",), "blacklist", rows[m].attempts,
                       rows[m].wasted_bytes)
                   for m in ("acpi_cpufreq", "edac_mce_amd", "powernow_k8", "pcc_cpufreq")}
    assert [x.module for x in a.items] == ["acpi_cpufreq", "edac_mce_amd", "powernow_k8",
                                           "pcc_cpufreq"]  # most wasted first
    acpi = a.items[0]
    assert acpi.cause == (
        "udev: 2 device(s) (cpu:2), MODALIAS not in the trace",
        "udev: 2 device(s) (acpi:2), MODALIAS acpi:LNXCPU: matched modules.alias "
        "`acpi*:LNXCPU:*`")
    assert acpi.facts[:2] == (
        "4 load attempt(s): 0 loaded, failed EBUSY:2,ENODEV:2",
        "init returned ENODEV:2 on 2 attempt(s) (the module was formed, its init failed); "
        "2 attempt(s) racing with it got EBUSY (found it GOING)")


def test_udev_workers_without_a_named_device_are_lookups_all_the_same(
        modules_dir: str) -> None:
    """Loads udev's workers made before the tracer saw their devices' broadcasts (the
    early trace has none): still alias lookups racing with each other."""
    loads = [_load(i, "cryptd", 0 if i == 0 else -errno.EEXIST, wasted=10) for i in range(3)]
    [a] = _advice(_report(loads), modules_dir)
    assert (a.patterns, a.kind, a.targets) == (("per-device-alias",), "preload", ("cryptd",))
    assert a.cause == ("udev: 3 load(s) by 3 of its workers for devices the trace does not "
                       "name (no broadcast of theirs was seen)",)
    assert a.facts[1] == ("udev looked it up 3 times (0 named devices); 2 of their loads "
                          "read the file and got EEXIST (it was loaded already)")


BOOT16 = DATA / "vmboot-6.1-16"


@pytest.fixture(scope="module")
def boot16(tmp_path_factory: pytest.TempPathFactory) -> reportdata.Report:
    """A real systemd boot of Debian's 6.1 on 16 vCPUs (`kmodtrace vm --boot --cpus 16`,
    software emulation on a loaded 2-core host: the tracer attached 220 s in, so the
    per-CPU loads before it come from the kernel's boot-time trace, without devices)."""
    import zstandard

    path = tmp_path_factory.mktemp("boot16") / "boot.jsonl"
    path.write_bytes(zstandard.ZstdDecompressor().decompress(
        (BOOT16 / "trace.jsonl.zst").read_bytes(), max_output_size=1 << 26))
    return reportdata.read(str(path))


def test_recorded_16_vcpu_boot(boot16: reportdata.Report) -> None:
    """What the advice says of a real boot, with the lines of the traced kernel's
    modules.alias and modules.dep this boot's MODALIASes match (tests/data/vmboot-6.1-16)."""
    a = advice.build(boot16, str(BOOT16))
    assert a.alias_found
    got = [(x.module, x.patterns, x.kind, x.targets,
            None if x.savings is None else (x.savings.attempts, x.savings.modprobe_spawns))
           for x in a.items]
    assert got == [
        ("acpi_cpufreq", ("init-fails-racers-ebusy",), "blacklist", ("acpi_cpufreq",),
         (16, 0)),
        ("cryptd", ("per-device-alias",), "preload", ("cryptd",), (15, 0)),
        ("pcc_cpufreq", ("init-fails-racers-ebusy",), "blacklist", ("pcc_cpufreq",), (16, 0)),
        ("crypto_simd", ("per-device-alias",), "preload", ("crypto_simd",), (15, 0)),
        ("net-pf-16-proto-9", ("kernel-caller-repeats",), "kernel-caller", (), (0, 1)),
    ]
    rows = boot16.by_module
    for x in a.items:
        if x.kind in ("blacklist", "preload") and x.savings is not None:
            # a blacklist saves every attempt's bytes, a preload every repeat's
            assert x.savings.wasted_bytes == rows[x.module].wasted_bytes, x.module
    acpi = a.items[0]
    assert acpi.cause == ("udev: 16 device(s) (acpi:16), MODALIAS acpi:LNXCPU: matched "
                          "modules.alias `acpi*:LNXCPU:*`",)
    assert acpi.facts[:2] == (
        "16 load attempt(s): 0 loaded, failed EBUSY:15,ENODEV:1",
        "init returned ENODEV:1 on 1 attempt(s) (the module was formed, its init failed); "
        "15 attempt(s) racing with it got EBUSY (found it GOING)")
    caller = a.items[-1]
    assert caller.text.startswith("the kernel asks from netlink_create: check before asking")
    assert caller.facts[-1] == "modprobe exit 1:3"  # no module provides net-pf-16-proto-9


@pytest.mark.skipif(not Path("/lib/modules/6.1.0-57-amd64/modules.alias").exists(),
                    reason="Debian's 6.1.0-57-amd64 is not installed here")
def test_the_fixture_advises_as_the_whole_modules_alias(boot16: reportdata.Report) -> None:
    assert advice.build(boot16, str(BOOT16)).to_json() == \
        advice.build(boot16, "/lib/modules/6.1.0-57-amd64").to_json()
