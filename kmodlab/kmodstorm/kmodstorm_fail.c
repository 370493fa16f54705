// SPDX-License-Identifier: GPL-2.0
/*
 * kmodstorm_fail: a module whose init fails, for kmodtrace's parity storms.
 *
 *   insmod kmodstorm_fail.ko             init returns -ENODEV: do_init_module() fails
 *   insmod kmodstorm_fail.ko err=0       loads and stays
 *   insmod kmodstorm_fail.ko err=bogus   parse_args() refuses it (-EINVAL)
 */
#include <linux/module.h>
#include <linux/errno.h>

static int err = ENODEV;
module_param(err, int, 0444);
MODULE_PARM_DESC(err, "the errno init returns, negated (0: load)");

static int __init kmodstorm_fail_init(void)
{
	return -err;
}

static void __exit kmodstorm_fail_exit(void)
{
}

module_init(kmodstorm_fail_init);
module_exit(kmodstorm_fail_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodtrace storm helper: a module whose init fails");
