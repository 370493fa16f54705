/* kmodtrace: ring buffer sizes are counted in pages (every x86-64 kernel: 4 KiB). */
#define PAGE_SIZE 4096UL
