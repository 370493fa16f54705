// kmodtrace BPF program, compiled by bcc. struct event and KIND_* come from
// tracer/events.py (prepended by tracer/probes.py); RINGBUF_PAGES, MAX_HELPERS
// and the HAVE_* switches come as -D cflags. Includes are kept to what the probes
// read: compile time is attach time.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/umh.h>

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);           // failed ring buffer reservations
BPF_HASH(helpers, u32, u64, MAX_HELPERS); // pid of a usermode helper -> sub_info
struct loading_t { char name[NAME_LEN]; };
BPF_HASH(loading, u32, struct loading_t, MAX_HELPERS); // tid inside (f)init_module

static __always_inline struct event *reserve(u32 kind)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
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
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct task_struct *parent = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), &task->real_parent);
    bpf_probe_read_kernel(&e->ppid, sizeof(u32), &parent->tgid);
    return e;
}

// __request_module(bool wait, const char *fmt, ...): the name is still a format.
int req_enter(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_REQ_ENTER);
    if (!e)
        return 0;
    e->wait = (u32)(PT_REGS_PARM1(ctx) & 1);
    bpf_probe_read_kernel_str(e->name, sizeof(e->name), (void *)PT_REGS_PARM2(ctx));
    // Most callers pass the name as the first vararg ("%s", "fs-%s").
    bpf_probe_read_kernel_str(e->path, sizeof(e->path), (void *)PT_REGS_PARM3(ctx));
    // The call site. module:module_request's ip, and the return address on the
    // stack, are the kretprobe trampoline once __request_module is kretprobed; the
    // kernel's unwinder recovers the real one (frame 0 is __request_module itself).
    u64 frames[2] = {};
    if (bpf_get_stack(ctx, frames, sizeof(frames), 0) == sizeof(frames))
        e->ip = frames[1];
    events.ringbuf_submit(e, 0);
    return 0;
}

int req_exit(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_REQ_EXIT);
    if (!e)
        return 0;
    e->ret = (int)PT_REGS_RC(ctx);
    events.ringbuf_submit(e, 0);
    return 0;
}

#ifdef HAVE_TP_MODULE_REQUEST
TRACEPOINT_PROBE(module, module_request)
{
    struct event *e = reserve(KIND_REQ_TP);
    if (!e)
        return 0;
    e->wait = args->wait;
    e->ip = args->ip;
    bpf_probe_read_kernel_str(e->name, sizeof(e->name),
                              (void *)args + (args->data_loc_name & 0xFFFF));
    events.ringbuf_submit(e, 0);
    return 0;
}
#endif

int umh_enter(struct pt_regs *ctx, struct subprocess_info *info, int wait)
{
    struct event *e = reserve(KIND_UMH_ENTER);
    if (!e)
        return 0;
    e->ptr = (u64)info;
    e->wait = wait;
    char *path = 0;
    char **argv = 0;
    bpf_probe_read_kernel(&path, sizeof(path), &info->path);
    bpf_probe_read_kernel(&argv, sizeof(argv), &info->argv);
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
    events.ringbuf_submit(e, 0);
    return 0;
}

int umh_exit(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_UMH_EXIT);
    if (!e)
        return 0;
    e->ret = (int)PT_REGS_RC(ctx);
    events.ringbuf_submit(e, 0);
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
    events.ringbuf_submit(e, 0);
    return 0;
}

int helper_exit(struct pt_regs *ctx, long code)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 *ptr = helpers.lookup(&pid);
    if (!ptr)
        return 0;
    struct event *e = reserve(KIND_HELPER_EXIT);
    if (e) {
        e->ptr = *ptr;
        e->ret = code;
        events.ringbuf_submit(e, 0);
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
        events.ringbuf_submit(e, 0);
    }
    if (l)
        loading.delete(&tid);
    return 0;
}

#ifdef HAVE_TP_SYS_ENTER_FINIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_enter_finit_module)
{
    loading_begin();
    struct event *e = reserve(KIND_FINIT_ENTER);
    if (!e)
        return 0;
    e->flags = args->flags;
    int fd = args->fd;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct files_struct *files = 0;
    struct fdtable *fdt = 0;
    struct file **fds = 0;
    struct file *f = 0;
    struct inode *inode = 0;
    struct super_block *sb = 0;
    struct dentry *dentry = 0;
    const unsigned char *dname = 0;
    bpf_probe_read_kernel(&files, sizeof(files), &task->files);
    bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt);
    bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd);
    bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
    if (f) {
        bpf_probe_read_kernel(&inode, sizeof(inode), &f->f_inode);
        bpf_probe_read_kernel(&e->ino, sizeof(e->ino), &inode->i_ino);
        bpf_probe_read_kernel(&e->size, sizeof(e->size), &inode->i_size);
        bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
        u32 dev = 0;
        bpf_probe_read_kernel(&dev, sizeof(dev), &sb->s_dev);
        e->dev = dev;
        bpf_probe_read_kernel(&dentry, sizeof(dentry), &f->f_path.dentry);
        bpf_probe_read_kernel(&dname, sizeof(dname), &dentry->d_name.name);
        bpf_probe_read_kernel_str(e->path, sizeof(e->path), dname);
    }
    events.ringbuf_submit(e, 0);
    return 0;
}
#endif

#ifdef HAVE_TP_SYS_ENTER_INIT_MODULE
TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    loading_begin();
    struct event *e = reserve(KIND_INIT_ENTER);
    if (!e)
        return 0;
    e->size = args->len;
    events.ringbuf_submit(e, 0);
    return 0;
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
    events.ringbuf_submit(e, 0);
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
    events.ringbuf_submit(e, 0);
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
    events.ringbuf_submit(e, 0);
    return 0;
}
#endif

int modinit_enter(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_MODINIT_ENTER);
    if (e)
        events.ringbuf_submit(e, 0);
    return 0;
}

int modinit_exit(struct pt_regs *ctx)
{
    struct event *e = reserve(KIND_MODINIT_EXIT);
    if (!e)
        return 0;
    e->ret = (int)PT_REGS_RC(ctx);
    events.ringbuf_submit(e, 0);
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
        events.ringbuf_submit(e, 0);
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
        events.ringbuf_submit(e, 0);
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
    events.ringbuf_submit(e, 0);
    return 0;
}

#ifdef HAVE_TP_SYS_ENTER_SENDMSG
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

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    struct kt_msghdr m = {};
    struct kt_sockaddr_nl sa = {};
    struct kt_iovec iov[2] = {};
    u64 magic = 0;
    if (bpf_probe_read_user(&m, sizeof(m), (void *)args->msg) || m.iovlen != 2 || !m.name)
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
    events.ringbuf_submit(e, 0);
    return 0;
}
#endif

// module_sig_check(struct load_info *info, int flags), kernel/module/signing.c (only
// with CONFIG_MODULE_SIG, which every distribution sets): on return info->len has lost
// the appended signature, and for a compressed file it is the decompressed length, so
// it is the len MODULE_STATS counts, not the file size. struct load_info is private to
// kernel/module/internal.h: LOAD_INFO_LEN_OFFSET (a -D flag) is where len sits.
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
                              (void *)(*ptr + LOAD_INFO_LEN_OFFSET));
        e->ret = (int)PT_REGS_RC(ctx);
        events.ringbuf_submit(e, 0);
    }
    sig_info.delete(&tid);
    return 0;
}
