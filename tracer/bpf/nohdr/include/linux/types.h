/* kmodtrace: the kernel's fixed-width types, all that bcc's bpf.h and helpers.h use. */
#ifndef _KMT_LINUX_TYPES_H
#define _KMT_LINUX_TYPES_H
typedef signed char s8;
typedef unsigned char u8;
typedef short s16;
typedef unsigned short u16;
typedef int s32;
typedef unsigned int u32;
typedef long long s64;
typedef unsigned long long u64;
typedef s8 __s8;
typedef u8 __u8;
typedef s16 __s16;
typedef u16 __u16;
typedef s32 __s32;
typedef u32 __u32;
typedef s64 __s64;
typedef u64 __u64;
typedef u16 __be16;
typedef u32 __be32;
typedef u64 __be64;
typedef u16 __le16;
typedef u32 __le32;
typedef u64 __le64;
typedef u32 __wsum;
typedef u16 __sum16;
typedef u64 __aligned_u64 __attribute__((aligned(8)));
typedef _Bool bool;
typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uintptr_t;
typedef int pid_t;
typedef unsigned short umode_t;
typedef long long loff_t;
#define true 1
#define false 0
#define NULL ((void *)0)
#define __user
#define __always_inline inline __attribute__((always_inline))
#endif
