/* kmodtrace: the kernel tree bcc compiles in where the kernel has BTF (BCC_KERNEL_SOURCE).
 * bcc force-includes this file and then its own helpers.h, which needs only the few
 * headers in this tree; the probes get every struct offset from BTF as -D flags. */
#define CONFIG_BPF_SYSCALL 1
