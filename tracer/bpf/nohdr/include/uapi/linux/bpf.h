/* kmodtrace: empty. bcc force-includes its own copy of this header (same guard) first. */
