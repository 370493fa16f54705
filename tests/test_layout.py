"""The house rules that the tree itself can check: the lab imports the core, never the
reverse; the tracer runs without the lab's modules loaded."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_scanner_sees_every_import_form() -> None:
    src = "import kmodlab\nfrom kmodlab import vm\ndef f():\n    from kmodlab.vm import x\n"
    assert {"kmodlab", "kmodlab.vm", "kmodlab.vm.x"} <= imported_modules(src)


def test_the_tracer_never_imports_the_lab() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path.read_text())
                                            if m == "kmodlab" or m.startswith("kmodlab."))
        for path in sorted((ROOT / "tracer").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_lab_stays_out_of_a_tracer_run() -> None:
    """`report` and `live` load the CLI, which finds the lab's commands through entry
    points (only when a command is looked up: tracer/cli.py _Main): listing them imports
    kmodlab.cli, and nothing of the lab's own modules may follow it into a tracer run."""
    trace = ROOT / "tests" / "data" / "vm-6.1" / "trace.jsonl"
    code = ("import json, sys\n"
            "from click.testing import CliRunner\n"
            "from tracer.cli import main\n"
            "runner = CliRunner()\n"
            "listed = runner.invoke(main, ['--help']).output\n"
            "assert all(c in listed for c in ('vm', 'parity', 'bench')), listed\n"
            f"done = runner.invoke(main, ['report', {str(trace)!r}])\n"
            "assert done.exit_code == 0, done.output\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kmodlab'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert json.loads(out.splitlines()[-1]) == ["kmodlab", "kmodlab.cli"]


def test_options_do_not_pull_in_the_bpf_side() -> None:
    """The CLI checks a session's options before it starts compiling: options.py raises
    TracerError from its leaf module (tracer/errors.py), not from probes.py."""
    code = ("import sys; import tracer.options\n"
            "print(sorted(m for m in ('tracer.probes', 'bcc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


def test_the_timelines_do_not_import_each_other() -> None:
    """The plot and the Perfetto export share their tracks through tracer/timeline.py."""
    for name in ("plot", "perfetto"):
        other = {"plot": "tracer.perfetto", "perfetto": "tracer.plot"}[name]
        src = (ROOT / "tracer" / f"{name}.py").read_text()
        assert not {m for m in imported_modules(src) if m == other or m.startswith(other + ".")}
