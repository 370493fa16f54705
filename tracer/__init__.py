"""kmodtrace: trace and judge concurrent Linux module loading."""

__version__ = "0.1.0"
