"""kmodtrace: trace and judge concurrent Linux module loading."""

__version__ = "0.1.0"

if __import__("os").environ.get("NOTIFY_SOCKET"):
    # Started by systemd (kmodtrace-boot.service, Type=notify): its start timeout runs from
    # exec, and the imports are slow under emulation too; see tracer.boot.
    from tracer.boot import extend_from_process_start

    extend_from_process_start()
