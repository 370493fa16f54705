// SPDX-License-Identifier: GPL-2.0
/*
 * kmodstorm: fire COUNT request_module(NAME) calls from COUNT kernel threads at
 * the same moment, as lib/test_kmod.c does, then return. A storm generator for
 * kmodtrace's tests: kernel-side concurrency that no userspace storm matches.
 *
 *   insmod kmodstorm.ko name=dummy count=50 [nowait=1 | mixed=1]
 *
 * Module init waits until every thread has returned, logs the return values
 * and stays loaded; rmmod it before the next storm.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/kmod.h>
#include <linux/completion.h>
#include <linux/atomic.h>
#include <linux/slab.h>

static char *name = "dummy";
module_param(name, charp, 0444);
MODULE_PARM_DESC(name, "module name to request");
static int count = 50;
module_param(count, int, 0444);
MODULE_PARM_DESC(count, "number of kernel threads, one request each");
static bool nowait;
module_param(nowait, bool, 0444);
MODULE_PARM_DESC(nowait, "use request_module_nowait()");
static bool mixed;
module_param(mixed, bool, 0444);
MODULE_PARM_DESC(mixed, "odd threads use request_module_nowait(), even ones request_module()");

static DECLARE_COMPLETION(all_ready);
static DECLARE_COMPLETION(go);
static DECLARE_COMPLETION(all_done);
static atomic_t ready, remaining;
static int *results;

static int storm_thread(void *data)
{
	long i = (long)data;

	if (atomic_inc_return(&ready) == count)
		complete(&all_ready);
	wait_for_completion(&go);
	if (nowait || (mixed && (i & 1)))
		results[i] = request_module_nowait("%s", name);
	else
		results[i] = request_module("%s", name);
	if (atomic_dec_and_test(&remaining))
		complete(&all_done);
	return 0;
}

static int __init kmodstorm_init(void)
{
	long i;
	int zero = 0, other = 0;

	if (count < 1 || count > 100000)
		return -EINVAL;
	results = kcalloc(count, sizeof(*results), GFP_KERNEL);
	if (!results)
		return -ENOMEM;
	atomic_set(&ready, 0);
	atomic_set(&remaining, count);
	for (i = 0; i < count; i++) {
		struct task_struct *t = kthread_run(storm_thread, (void *)i, "kmodstorm/%ld", i);

		if (IS_ERR(t)) {
			pr_err("kmodstorm: thread %ld: %ld\n", i, PTR_ERR(t));
			/* let the threads already started run and finish */
			count = i;
			atomic_set(&remaining, i);
			break;
		}
	}
	if (count == 0) {
		kfree(results);
		return -ENOMEM;
	}
	if (atomic_read(&ready) < count)
		wait_for_completion(&all_ready);
	complete_all(&go);
	wait_for_completion(&all_done);
	for (i = 0; i < count; i++) {
		if (results[i] == 0)
			zero++;
		else
			other++;
	}
	pr_info("kmodstorm: %d %s requests for %s: %d returned 0, %d other (first %d)\n",
		count, mixed ? "mixed" : nowait ? "nowait" : "wait", name, zero, other, results[0]);
	kfree(results);
	results = NULL;
	return 0;
}

static void __exit kmodstorm_exit(void)
{
}

module_init(kmodstorm_init);
module_exit(kmodstorm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodtrace storm generator: concurrent request_module() from kthreads");
