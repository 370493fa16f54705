// kmodtrace BPF program, compiled by bcc. struct event and KIND_* come from
// tracer/events.py (prepended by tracer/probes.py); RINGBUF_PAGES, MAX_HELPERS and
// the HAVE_* switches come as -D cflags; the OFF_* struct member offsets see kmt_off.
// Compile time is attach time: the program includes nothing but ptrace.h. The
// offsets come from the kernel's BTF (tracer/kernel.py OFFSETS), and then bcc
// compiles in tracer/bpf/nohdr, a kernel tree of a dozen lines, instead of the
// kernel headers. Only a kernel without BTF needs its headers, for offsetof().
#include <uapi/linux/ptrace.h>
#ifdef KMT_KERNEL_HEADERS
#include <linux/sched.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/umh.h>
#endif

// Struct member offsets (OFF_*, defined before this file from tracer/kernel.py OFFSETS):
// in the BTF builds, slots of kmt_off that tracer/probes.py fills once compiled, so that
// the compile need not wait for BTF to be parsed; in the headers build, -D offsetof()s.
// Slot N_OFFSETS is 1 once they are written: until then reserve() emits nothing (bcc
// attaches the tracepoints and trampolines while compiling, before the slots are filled).
BPF_ARRAY(kmt_off, u32, N_OFFSETS + 1);

static __always_inline u64 kmt_offset(int i)
{
    u32 *o = kmt_off.lookup(&i);
    return o ? *o : 0;
}

// Read the pointer-sized or smaller member at BASE + OFF into DST.
#define READ_AT(dst, base, off) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)((u64)(base) + (off)))

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);           // failed ring buffer reservations
BPF_HASH(helpers, u32, u64, MAX_HELPERS); // pid of a usermode helper -> sub_info
struct loading_t { char name[NAME_LEN]; };
BPF_HASH(loading, u32, struct loading_t, MAX_HELPERS); // tid inside (f)init_module

// BPF_RB_NO_WAKEUP: the reader reads on a timer (tracer/live.py TICK_S), so a record
// need not queue the irq_work that wakes it, which the kernel would do each time the
// reader had caught up: once per event in a storm (issue #14).
#define SUBMIT_QUIET 1

// A record, or 0 with the loss counted unless the caller keeps what it would hold
// (COUNT_LOST 0: req_site, which runs as an NMI, where the reservation only try-locks).
static __always_inline struct event *reserve_counted(u32 kind, int count_lost)
{
    if (!kmt_offset(N_OFFSETS))
        return 0;
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n && count_lost)
            (*n)++;
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    u64 id = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->kind = kind;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u64 task = bpf_get_current_task();
    u64 parent = 0;
    READ_AT(parent, task, OFF_TASK_REAL_PARENT);
    READ_AT(e->ppid, parent, OFF_TASK_TGID);
    return e;
}

static __always_inline struct event *reserve(u32 kind)
{
    return reserve_counted(kind, 1);
}

// Returns of __request_module. Its kretprobe has at most 4096 instances (the tracefs
// cap), and every request waiting behind the 50-helper throttle holds one from entry,
// so in a storm of more the latecomers get none. Hooks that need no instance see them:
// - req_site, a kprobe on the return address of each call site seen, every return;
// - KMOD_SEM: an fexit of down_timeout() failing on the kmod_concurrent_max semaphore
//   (6.4 on), the -ETIME of a request that timed out in the throttle. (On 4.13 to 6.3
//   the throttle waits on kmod_wq, and its timeout is schedule_timeout() returning 0:
//   every CPU runs that function all the time, and patching it in for an fexit locked a
//   16-vCPU guest up under software emulation, every CPU spinning at its first byte.)
// - A request that got a slot and ran modprobe returns what call_modprobe() returned,
//   call_usermodehelper_exec()'s return (kernel/module/kmod.c; dups.c's announce after
//   it changes no ret): umh_exit saves it, and if neither the kretprobe nor req_site
//   comes, the thread's exit or its next request emits it.
// inreq: tid -> state: 1 from entry, 2 once a rescue emitted the return, 3 once past the
// throttle (the module_request tracepoint), 4 once modprobe returned (ret and ts saved),
// so that whichever hook sees a thread's return first emits it, once.
struct inreq_t {
    u64 ts_ns;  // state 4: when modprobe returned
    u64 site;   // the call's return address (req_site)
    int ret;    // state 4: what it returned
    u32 state;
};
BPF_HASH(inreq, u32, struct inreq_t, MAX_HELPERS);
// [0] returns emitted by a rescue (req_site, the throttle fexit, or modprobe's saved
// return at the thread's exit or next request), [1] of those, the kretprobe saw too
// (the fexit's alone: the others run only where it did not), [2] of those,
// wrong: the thread got a slot after all (a slot freed between the timeout and the
// wait's last check) and reached the tracepoint
BPF_ARRAY(rescue, u64, 3);

static __always_inline void count_rescue(int i)
{
    u64 *n = rescue.lookup(&i);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// RET, the return of a request its kretprobe has no instance for, found by another hook
// (at TS if not 0: a saved return, state 4, when modprobe returned); 0 if there was no
// room. Where COUNT_LOST, one with no room is counted lost and as emitted, so that
// probes.py missed() does not count it again.
static __always_inline int emit_rescued_return(int ret, u64 ts, int count_lost)
{
    struct event *e = reserve_counted(KIND_REQ_EXIT, count_lost);
    if (e || count_lost)
        count_rescue(0);
    if (!e)
        return 0;
    if (ts)
        e->ts_ns = ts;
    e->ret = ret;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 1;
}

// __request_module(bool wait, const char *fmt, ...): the name is still a format.
int req_enter(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *prev = inreq.lookup(&tid);
    if (prev && prev->state == 4)
        emit_rescued_return(prev->ret, prev->ts_ns, 1);
    // The call site. module:module_request's ip, and the return address on the
    // stack, are the kretprobe trampoline once __request_module is kretprobed; the
    // kernel's unwinder recovers the real one (frame 0 is __request_module itself).
    u64 frames[2] = {};
    if (bpf_get_stack(ctx, frames, sizeof(frames), 0) != sizeof(frames))
        frames[1] = 0;
    struct inreq_t fresh = {.state = 1, .site = frames[1]};
    inreq.update(&tid, &fresh);
    struct event *e = reserve(KIND_REQ_ENTER);
    if (!e)
        return 0;
    e->wait = (u32)(PT_REGS_PARM1(ctx) & 1);
    bpf_probe_read_kernel_str(e->name, sizeof(e->name), (void *)PT_REGS_PARM2(ctx));
    // Most callers pass the name as the first vararg ("%s", "fs-%s").
    bpf_probe_read_kernel_str(e->path, sizeof(e->path), (void *)PT_REGS_PARM3(ctx));
    e->ip = frames[1];
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

int req_exit(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    int rescued = r && r->state == 2;
    if (r)
        inreq.delete(&tid);
    if (rescued) {  // the throttle fexit emitted this return already
        count_rescue(1);
        return 0;
    }
    struct event *e = reserve(KIND_REQ_EXIT);
    if (!e)
        return 0;
    e->ret = (int)PT_REGS_RC(ctx);
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// A kprobe on the return address of each call site of __request_module (the
// instruction after the call), attached once a request from there has been seen
// (probes.py Tracer.watch_site). Every return to the site passes it, with a kretprobe
// instance or without. The kretprobe's handler runs first and forgets the thread, so a
// thread still in inreq, at the site its request was called from, had none: its return
// is in rax. A request emitted already (state 2, the throttle fexit) is forgotten.
// PT_REGS_IP is the probed address + 1 on x86-64, whether the kprobe is an int3 or
// optimized to a jump (arch/x86/kernel/kprobes).
// An int3 kprobe's handler runs as an NMI on x86 (exc_int3: irqentry_nmi_enter), where
// bpf_ringbuf_reserve only try-locks the ring (kernel/bpf/ringbuf.c): on 2 CPUs in the
// 10 000-request storm 19 of 5 904 failed. Such a return is kept as modprobe's is
// (state 4), for the thread's exit or next request to emit (helper_exit, req_enter).
int req_site(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    if (!r || r->site + 1 != PT_REGS_IP(ctx))
        return 0;
    int ret = (int)PT_REGS_RC(ctx);
    if (r->state == 2 || emit_rescued_return(ret, 0, 0)) {
        inreq.delete(&tid);
        return 0;
    }
    r->ts_ns = bpf_ktime_get_ns();
    r->ret = ret;
    r->state = 4;
    return 0;
}

#ifdef KMOD_SEM
// The throttle's timeout: emit the -ETIME return of a thread still before the tracepoint.
// Only with the fexit's flags (KMOD_ETIME among them): a kernel without BPF trampolines
// compiles the program without it (probes.py _compile_trampolines).
KRETFUNC_PROBE(down_timeout, void *sem, long timeout, int ret)
{
    if (ret == 0 || (u64)sem != KMOD_SEM)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    if (!r || r->state != 1)
        return 0;
    r->state = 2;
    emit_rescued_return(-KMOD_ETIME, 0, 1);
    return 0;
}
#endif

#ifdef HAVE_TP_MODULE_REQUEST
TRACEPOINT_PROBE(module, module_request)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    if (r) {
        if (r->state == 2)
            count_rescue(2);
        r->state = 3;
    }
    struct event *e = reserve(KIND_REQ_TP);
    if (!e)
        return 0;
    e->wait = args->wait;
    e->ip = args->ip;
    bpf_probe_read_kernel_str(e->name, sizeof(e->name),
                              (void *)args + (args->data_loc_name & 0xFFFF));
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}
#endif

int umh_enter(struct pt_regs *ctx, void *info, int wait)
{
    struct event *e = reserve(KIND_UMH_ENTER);
    if (!e)
        return 0;
    e->ptr = (u64)info;
    e->wait = wait;
    char *path = 0;
    char **argv = 0;
    READ_AT(path, info, OFF_UMH_PATH);
    READ_AT(argv, info, OFF_UMH_ARGV);
    bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
    // modprobe gets "-q -- NAME": keep the last argument.
    char *arg = 0, *last = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (bpf_probe_read_kernel(&arg, sizeof(arg), &argv[i]) || !arg)
            break;
        last = arg;
    }
    if (last)
        bpf_probe_read_kernel_str(e->name, sizeof(e->name), last);
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

int umh_exit(struct pt_regs *ctx)
{
    int ret = (int)PT_REGS_RC(ctx);
    struct event *e = reserve(KIND_UMH_EXIT);
    u64 ts = e ? e->ts_ns : bpf_ktime_get_ns();
    if (e) {
        e->ret = ret;
        events.ringbuf_submit(e, SUBMIT_QUIET);
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    if (r && r->state == 3) {
        r->state = 4;
        r->ret = ret;
        r->ts_ns = ts + 1;  // just after this event, in the trace's order
    }
    return 0;
}

// Runs in the new helper thread, which then execs modprobe with the same pid.
int umh_spawn(struct pt_regs *ctx, void *info)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 ptr = (u64)info;
    helpers.update(&pid, &ptr);
    struct event *e = reserve(KIND_UMH_SPAWN);
    if (!e)
        return 0;
    e->ptr = ptr;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

int helper_exit(struct pt_regs *ctx, long code)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inreq_t *r = inreq.lookup(&tid);
    if (r) {
        if (r->state == 4)  // modprobe returned, the kretprobe never came
            emit_rescued_return(r->ret, r->ts_ns, 1);
        inreq.delete(&tid);  // else a request whose return no hook saw
    }
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 *ptr = helpers.lookup(&pid);
    if (!ptr)
        return 0;
    struct event *e = reserve(KIND_HELPER_EXIT);
    if (e) {
        e->ptr = *ptr;
        e->ret = code;
        events.ringbuf_submit(e, SUBMIT_QUIET);
    }
    helpers.delete(&pid);
    return 0;
}

static __always_inline void loading_begin(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct loading_t empty = {};
    loading.update(&tid, &empty);
}

// The (f)init_module exit: its result, and the name the kernel looked up inside it.
static __always_inline int loading_end(u32 kind, long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct loading_t *l = loading.lookup(&tid);
    struct event *e = reserve(kind);
    if (e) {
        e->ret = ret;
        if (l)
            __builtin_memcpy(e->name, l->name, sizeof(e->name));
        events.ringbuf_submit(e, SUBMIT_QUIET);
    }
    if (l)
        loading.delete(&tid);
    return 0;
}

// finit_module(fd, uargs, flags) entered: the file's name, inode and size.
static __always_inline int finit_enter(int fd, u32 flags)
{
    loading_begin();
    struct event *e = reserve(KIND_FINIT_ENTER);
    if (!e)
        return 0;
    e->flags = flags;
    // current->files->fdt->fd[fd]: the struct file, its inode and its name
    u64 task = bpf_get_current_task();
    u64 files = 0, fdt = 0, fds = 0, f = 0, inode = 0, sb = 0, dentry = 0, dname = 0;
    READ_AT(files, task, OFF_TASK_FILES);
    READ_AT(fdt, files, OFF_FILES_FDT);
    READ_AT(fds, fdt, OFF_FDTABLE_FD);
    READ_AT(f, fds, (u64)fd * sizeof(u64));
    if (f) {
        READ_AT(inode, f, OFF_FILE_INODE);
        READ_AT(e->ino, inode, OFF_INODE_INO);
        READ_AT(e->size, inode, OFF_INODE_SIZE);
        READ_AT(sb, inode, OFF_INODE_SB);
        u32 dev = 0;
        READ_AT(dev, sb, OFF_SB_DEV);
        e->dev = dev;
        READ_AT(dentry, f, OFF_FILE_DENTRY);
        READ_AT(dname, dentry, OFF_DENTRY_NAME);
        bpf_probe_read_kernel_str(e->path, sizeof(e->path), (void *)dname);
    }
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// init_module(umod, len, uargs) entered: the image's length.
static __always_inline int init_enter(u64 len)
{
    loading_begin();
    struct event *e = reserve(KIND_INIT_ENTER);
    if (!e)
        return 0;
    e->size = len;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// The module syscalls come from one of two hooks (tracer/probes.py picks, per hook):
// - SYS_FENTRY_*: a BPF trampoline on the x86-64 wrapper __x64_sys_NAME(const struct
//   pt_regs *regs), whose argument is the caller's registers (the syscall ABI: di, si,
//   dx). It costs only the calls it hooks.
// - HAVE_TP_SYS_*: the syscalls:* tracepoints, where there are no trampolines. Enabling
//   any of them sets SYSCALL_WORK_SYSCALL_TRACEPOINT on every task, and every system
//   call of every process then takes the slow path (4.8 % of a modprobe storm under
//   emulation, bench/RESULTS.md).
#define SYS_REGS(r, regs) \
    struct pt_regs r = {}; \
    bpf_probe_read_kernel(&r, sizeof(r), (void *)(regs))

#ifdef SYS_FENTRY_FINIT_MODULE
KFUNC_PROBE(__x64_sys_finit_module, const struct pt_regs *regs)
{
    SYS_REGS(r, regs);
    return finit_enter((int)r.di, (u32)r.dx);
}
#endif

#ifdef SYS_FEXIT_FINIT_MODULE
KRETFUNC_PROBE(__x64_sys_finit_module, const struct pt_regs *regs, long ret)
{
    return loading_end(KIND_FINIT_EXIT, ret);
}
#endif

#ifdef SYS_FENTRY_INIT_MODULE
KFUNC_PROBE(__x64_sys_init_module, const struct pt_regs *regs)
{
    SYS_REGS(r, regs);
    return init_enter(r.si);
}
#endif

#ifdef SYS_FEXIT_INIT_MODULE
KRETFUNC_PROBE(__x64_sys_init_module, const struct pt_regs *regs, long ret)
{
    return loading_end(KIND_INIT_EXIT, ret);
}
#endif

// - SYS_KPROBE_*: a kprobe and a kretprobe on that wrapper, where a trampoline can be
//   preempted (tracer/kernel.py preemption): the kernel then skips the fentry/fexit of
//   every other task on that CPU; a kprobe runs with preemption disabled. As cheap as
//   the trampolines for every other call; a return beyond the kretprobe's instances is
//   counted in its nmissed.
#ifdef SYS_KPROBE_FINIT_MODULE
int sys_finit_module_enter(struct pt_regs *ctx, const struct pt_regs *regs)
{
    SYS_REGS(r, regs);
    return finit_enter((int)r.di, (u32)r.dx);
}

int sys_finit_module_exit(struct pt_regs *ctx)
{
    return loading_end(KIND_FINIT_EXIT, (long)PT_REGS_RC(ctx));
}
#endif

#ifdef SYS_KPROBE_INIT_MODULE
int sys_init_module_enter(struct pt_regs *ctx, const struct pt_regs *regs)
{
    SYS_REGS(r, regs);
    return init_enter(r.si);
}

int sys_init_module_exit(struct pt_regs *ctx)
{
    return loading_end(KIND_INIT_EXIT, (long)PT_REGS_RC(ctx));
}
#endif

#ifdef HAVE_TP_SYS_ENTER_FINIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_enter_finit_module)
{
    return finit_enter(args->fd, args->flags);
}
#endif

#ifdef HAVE_TP_SYS_ENTER_INIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    return init_enter(args->len);
}
#endif

#ifdef HAVE_TP_SYS_EXIT_FINIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_exit_finit_module)
{
    return loading_end(KIND_FINIT_EXIT, args->ret);
}
#endif

#ifdef HAVE_TP_SYS_EXIT_INIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_exit_init_module)
{
    return loading_end(KIND_INIT_EXIT, args->ret);
}
#endif

// module_patient_check_exists(name, reason): early_mod_check() calls it with
// FAIL_DUP_MOD_BECOMING (0), add_unformed_module() with FAIL_DUP_MOD_LOAD (1); the last
// call in a load that failed -EEXIST/-EBUSY is the check that refused it (6.4+).
int patient_check(struct pt_regs *ctx, const char *name, int reason)
{
    struct event *e = reserve(KIND_PATIENT_CHECK);
    if (!e)
        return 0;
    e->flags = (u32)reason;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// find_module_all(name, len, even_unformed): the first lookup with
// even_unformed inside a load is the duplicate check on the module's own name
// (add_unformed_module before 6.4, module_patient_check_exists after), the only
// place a failed load's name is visible.
int find_module(struct pt_regs *ctx, const char *name, unsigned long len, bool even_unformed)
{
    if (!even_unformed)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct loading_t *l = loading.lookup(&tid);
    if (!l || l->name[0])
        return 0;
    u32 n = len < NAME_LEN - 1 ? len : NAME_LEN - 1;
    bpf_probe_read_kernel(l->name, n & (NAME_LEN - 1), name);
    return 0;
}

#ifdef HAVE_TP_MODULE_LOAD
TRACEPOINT_PROBE(module, module_load)
{
    struct event *e = reserve(KIND_MOD_LOAD);
    if (!e)
        return 0;
    e->flags = args->taints;
    bpf_probe_read_kernel_str(e->name, sizeof(e->name),
                              (void *)args + (args->data_loc_name & 0xFFFF));
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}
#endif

#ifdef HAVE_TP_MODULE_FREE
TRACEPOINT_PROBE(module, module_free)
{
    struct event *e = reserve(KIND_MOD_FREE);
    if (!e)
        return 0;
    bpf_probe_read_kernel_str(e->name, sizeof(e->name),
                              (void *)args + (args->data_loc_name & 0xFFFF));
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}
#endif

int modinit_enter(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_MODINIT_ENTER);
    if (e)
        events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

int modinit_exit(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_MODINIT_EXIT);
    if (!e)
        return 0;
    e->ret = (int)PT_REGS_RC(ctx);
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// The kernel's own verdicts, where dups.c is built in (the oracle kernel).
BPF_HASH(dup_ret_ptr, u32, u64, MAX_HELPERS); // tid -> the int *dup_ret argument

int dup_check_enter(struct pt_regs *ctx, char *name, bool wait, int *dup_ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 ptr = (u64)dup_ret;
    dup_ret_ptr.update(&tid, &ptr);
    // Just before mutex_lock(&kmod_dup_mutex): the order the kernel took it in, which
    // the tracepoint before it can miss by the time the task was preempted.
    struct event *e = reserve(KIND_DUP_ENTER);
    if (e)
        events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

int dup_check_exit(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *ptr = dup_ret_ptr.lookup(&tid);
    struct event *e = reserve(KIND_DUP_VERDICT);
    if (e) {
        e->wait = (u32)(PT_REGS_RC(ctx) & 1);
        int dup_ret = 0;
        // *dup_ret is only written for duplicates; it is final when the call returns
        if (ptr && e->wait)
            bpf_probe_read_kernel(&dup_ret, sizeof(dup_ret), (void *)*ptr);
        e->ret = dup_ret;
        events.ringbuf_submit(e, SUBMIT_QUIET);
    }
    dup_ret_ptr.delete(&tid);
    return 0;
}

int dup_announce(struct pt_regs *ctx, char *name, int ret)
{
    struct event *e = reserve(KIND_DUP_ANNOUNCE);
    if (!e)
        return 0;
    bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
    e->ret = ret;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

// udev's worker broadcasts each device it finished (rules run, builtin kmod's
// modules loaded) to the udev netlink group: iov[0] is a header that starts with
// "libudev\0", iov[1] the KEY=VALUE\0 properties (systemd's
// device_monitor_send_device()). The (f)init_module calls that worker made just
// before were for that device. Own minimal structs: the uapi ABI, no includes.
struct kt_msghdr { void *name; int namelen; void *iov; u64 iovlen; };
struct kt_iovec { void *base; u64 len; };
struct kt_sockaddr_nl { u16 family; u16 pad; u32 pid; u32 groups; };
#define LIBUDEV_MAGIC 0x007665647562696cULL /* "libudev\0", little endian */
#define UDEV_GROUP 2 /* MONITOR_GROUP_UDEV */

static __always_inline int udev_sendmsg(const void *msg)
{
    struct kt_msghdr m = {};
    struct kt_sockaddr_nl sa = {};
    struct kt_iovec iov[2] = {};
    u64 magic = 0;
    if (bpf_probe_read_user(&m, sizeof(m), (void *)msg) || m.iovlen != 2 || !m.name)
        return 0;
    if (bpf_probe_read_user(&sa, sizeof(sa), m.name) || sa.family != 16 /* AF_NETLINK */ ||
        sa.groups != UDEV_GROUP)
        return 0;
    if (bpf_probe_read_user(iov, sizeof(iov), m.iov) ||
        bpf_probe_read_user(&magic, sizeof(magic), iov[0].base) || magic != LIBUDEV_MAGIC)
        return 0;
    struct event *e = reserve(KIND_UDEV_DEVICE);
    if (!e)
        return 0;
    e->size = iov[1].len;
    bpf_probe_read_user(e->path, sizeof(e->path), iov[1].base);
    // NUL-separated properties: make them newline-separated so the text survives
    // decoding as a C string.
#pragma unroll
    for (int i = 0; i < PATH_LEN - 1; i++)
        if (e->path[i] == 0)
            e->path[i] = '\n';
    e->path[PATH_LEN - 1] = 0;
    events.ringbuf_submit(e, SUBMIT_QUIET);
    return 0;
}

#ifdef SYS_FENTRY_SENDMSG
KFUNC_PROBE(__x64_sys_sendmsg, const struct pt_regs *regs)
{
    SYS_REGS(r, regs);
    return udev_sendmsg((const void *)r.si);
}
#endif

#ifdef HAVE_TP_SYS_ENTER_SENDMSG
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return udev_sendmsg(args->msg);
}
#endif

// module_sig_check(struct load_info *info, int flags), kernel/module/signing.c (only
// with CONFIG_MODULE_SIG, which every distribution sets): on return info->len has lost
// the appended signature, and for a compressed file it is the decompressed length, so
// it is the len MODULE_STATS counts, not the file size. struct load_info is private to
// kernel/module/internal.h: OFF_LOAD_INFO_LEN (from BTF) is where len sits.
BPF_HASH(sig_info, u32, u64, MAX_HELPERS); // tid -> the load_info pointer

int sig_check_enter(struct pt_regs *ctx, void *info)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 ptr = (u64)info;
    sig_info.update(&tid, &ptr);
    return 0;
}

int sig_check_exit(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *ptr = sig_info.lookup(&tid);
    if (!ptr)
        return 0;
    struct event *e = reserve(KIND_MOD_LEN);
    if (e) {
        bpf_probe_read_kernel(&e->size, sizeof(e->size),
                              (void *)(*ptr + OFF_LOAD_INFO_LEN));
        e->ret = (int)PT_REGS_RC(ctx);
        events.ringbuf_submit(e, SUBMIT_QUIET);
    }
    sig_info.delete(&tid);
    return 0;
}
