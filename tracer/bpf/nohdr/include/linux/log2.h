/* kmodtrace: helpers.h's stack-trace tables use roundup_pow_of_two; kmodtrace has none. */
