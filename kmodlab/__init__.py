"""The lab around kmodtrace: test VMs, storms, the tracefs witness, the oracle kernel,
parity and benchmarks. The lab imports the tracer; the tracer never imports the lab."""
