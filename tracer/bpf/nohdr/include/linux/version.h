/* kmodtrace: LINUX_VERSION_CODE comes as a -D flag from the running kernel's release. */
#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
