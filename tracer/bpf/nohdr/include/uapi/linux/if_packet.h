/* kmodtrace: empty. helpers.h includes it for socket programs, which kmodtrace has none of. */
