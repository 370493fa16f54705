/* kmodtrace: the x86-64 kernel's struct pt_regs (arch/x86/include/asm/ptrace.h), which
 * bcc's PT_REGS_* macros read. Its layout is the syscall/interrupt frame: kernel ABI. */
#ifndef _KMT_PTRACE_H
#define _KMT_PTRACE_H
#ifndef __x86_64__
#error "kmodtrace's header-free build is x86-64 only: install the kernel headers"
#endif
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx;
    unsigned long r11, r10, r9, r8, ax, cx, dx, si, di;
    unsigned long orig_ax, ip, cs, flags, sp, ss;
};
#endif
