"""The tracer's user-facing error: a leaf module, so that what only needs to raise it
(options, the CLI's checks) does not import the BPF side (probes.py) with it."""

from __future__ import annotations


class TracerError(RuntimeError):
    """A one-line, user-facing reason the tracer cannot run."""
