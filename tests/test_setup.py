"""The one list of programs (kmodlab/programs.tsv): installed, and complete.

`make test` runs vm/bootstrap.sh first, which installs every Debian package on the list,
so a listed program that is missing here is a failure. The other direction is a static
scan of the code: every program tracer/ and kmodlab/ start by a literal name
(subprocess and os.exec* calls and the wrappers around them, shutil.which, command
prefixes a function returns), and every command of the shell text they run (sh -c
scripts, scripts kept in strings, the boot unit's) and of the repo's scripts (vm/, .ci/run,
the Makefile's recipes), must be on the list.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from kmodlab import oracle, programs

ROOT = Path(__file__).resolve().parent.parent
SELF = {"kmodtrace"}  # our own console script

# --- shell text ----------------------------------------------------------------------------

_SEPARATORS = {";", ";;", "&&", "||", "|", "|&", "&", "\n"}
_REDIRECTIONS = {"<", ">", ">>", ">&", "<&", "&>", "&>>", ">|", "<<", "<<<", "<>"}
_GO_ON = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "exec",
          "command", "nohup"}  # a command follows
_END = {"fi", "done", "esac", "}"}
_LISTS = {"for", "case", "select", "in"}  # words up to the next separator are not commands
_BUILTINS = {"[", "[[", "test", ":", "true", "false", "echo", "printf", "export", "cd", "exit",
             "return", "set", "unset", "shift", "local", "declare", "readonly", "read",
             "continue", "break", "trap", "wait", "eval", "source", ".", "let", "umask",
             "type", "hash", "pwd", "kill", "mapfile", "readarray", "getopts", "function"}
_OPERATORS = sorted(_SEPARATORS | _REDIRECTIONS, key=len, reverse=True)
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")


def _substitutions(word: str) -> Iterator[str]:
    """The text of each $(...) and `...` in WORD (a quoted word keeps them whole)."""
    i = 0
    while (i := word.find("$(", i)) >= 0:
        depth, j = 1, i + 2
        while j < len(word) and depth:
            depth += {"(": 1, ")": -1}.get(word[j], 0)
            j += 1
        yield word[i + 2:j - 1 if depth == 0 else j]
        i = j
    yield from re.findall(r"`([^`]*)`", word)


def _operators(tok: str) -> list[str]:
    """shlex joins adjacent operator characters ("()", ");", "<("): split them apart."""
    if not tok or set(tok) - set("();<>|&"):
        return [tok]
    out = []
    while tok:
        op = next((o for o in _OPERATORS if tok.startswith(o)), tok[0])
        out.append(op)
        tok = tok[len(op):]
    return out


def shell_programs(text: str) -> set[str]:
    """The programs a shell script runs by name (absolute paths: their base name).

    A small reader of the shell grammar our scripts use: command position after
    separators, keywords, subshells, $(...), case patterns; assignments, builtins,
    functions it defines, redirections and words built from variables are skipped.
    Relative paths (.venv/bin/pip) are the project's own files and are skipped too.
    """
    found: set[str] = set()
    functions: set[str] = set()
    m = re.match(r"#!\s*(\S+)(?:\s+(\S+))?", text)
    if m:
        found.add(m[2] if m[1].endswith("/env") and m[2] else Path(m[1]).name)
    text = text.replace("\\\n", " ")
    text = re.sub(r"(?m)(^|\s)#.*$", r"\1", text)  # comments (not inside words)
    text = re.sub(r"\$\{[^}]*\}", "X", text)  # ${var...}
    text = re.sub(r"\$?\(\([^()]*\)\)", " true ", text)  # arithmetic
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.commenters = ""
        lex.wordchars += "+%:,@^![]{}$#"
        toks = [op for t in lex for op in _operators(t)]
        cmdpos, listing, depth, i = True, False, 0, 0
        while i < len(toks):
            t = toks[i]
            nxt = toks[i + 1] if i + 1 < len(toks) else ""
            i += 1
            for sub in _substitutions(t) if "$(" in t or "`" in t else ():
                found |= shell_programs(sub)
            if t in _SEPARATORS:
                cmdpos, listing = True, False
            elif t == "(":
                depth += 1
                cmdpos, listing = True, False
            elif t == ")":
                depth = max(0, depth - 1)
                cmdpos, listing = True, False
            elif t in _REDIRECTIONS:
                i += 1  # its target
            elif not cmdpos or listing:
                continue
            elif t in _LISTS:
                listing = True
            elif t in _GO_ON:
                pass
            elif t in _END:
                cmdpos = False
            elif nxt == "(" and toks[i + 1:i + 2] == [")"]:  # NAME() { ... }
                functions.add(t)
                i += 2
                cmdpos = False
            elif _ASSIGN.match(t):
                if t.endswith("=") and nxt == "(":  # array=( words )
                    while i < len(toks) and toks[i] != ")":
                        i += 1
                    i += 1
            elif depth == 0 and nxt == ")":  # a case pattern
                continue
            else:
                cmdpos = False
                if t in _BUILTINS or t in functions or not re.fullmatch(r"[\w./+-]+", t):
                    continue
                if "/" in t and not t.startswith("/"):
                    continue
                name = Path(t).name
                found.add(name)
                if name in ("sh", "bash") and nxt == "-c" and i + 1 < len(toks):
                    found |= shell_programs(toks[i + 1])
                    i += 2
    return found


# --- Python code ---------------------------------------------------------------------------

_SPAWN = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
          "subprocess.check_output", "os.spawnvp", "os.spawnvpe", "os.posix_spawnp"}
_EXEC = {"os.execv", "os.execve", "os.execvp", "os.execvpe", "os.execl", "os.execle",
         "os.execlp", "os.execlpe"}  # the program is the first argument, argv the second


def _dotted(node: ast.expr, imports: dict[str, str]) -> str:
    if isinstance(node, ast.Name):
        return imports.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, imports)}.{node.attr}"
    return ""


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def python_programs(source: str, module: str = "",
                    known: dict[str, int] | None = None) -> tuple[set[str], dict[str, int]]:
    """The programs SOURCE (the module MODULE) starts by a literal name: argv lists (inline,
    or bound to a name first) given to subprocess/os.exec*, or to a function that passes
    its argument on to them (this module's, or KNOWN: "module.function" -> which
    argument); shell=True strings; sh -c scripts; shutil.which names.

    Also returns this module's such functions, as "MODULE.function" -> argument index.
    """
    tree = ast.parse(source)
    imports: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                imports[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                imports[a.asname or a.name] = f"{node.module}.{a.name}"
    bound: dict[str, list[ast.expr]] = {}  # name -> the lists and strings assigned to it
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List | ast.Tuple
                                                       | ast.Constant):
            for tgt in node.targets:
                if isinstance(tgt, ast.Name):
                    bound.setdefault(tgt.id, []).append(node.value)

    def argv_of(call: ast.Call, name: str, wrappers: dict[str, int]) -> ast.expr | None:
        if name in _EXEC:
            return call.args[1] if len(call.args) > 1 else None
        idx = wrappers.get(name, (known or {}).get(name, 0 if name in _SPAWN else -1))
        if idx < 0:
            return None
        if idx < len(call.args):
            return call.args[idx]
        return next((k.value for k in call.keywords if k.arg in ("args", "argv", "cmd")), None)

    # functions that hand a parameter on as argv (vm._run, storms._exec), to a fixed point
    wrappers: dict[str, int] = {}
    funcs = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
    while True:
        before = dict(wrappers)
        for f in funcs:
            params = [a.arg for a in f.args.args]
            for call in (c for c in ast.walk(f) if isinstance(c, ast.Call)):
                argv = argv_of(call, _dotted(call.func, imports), wrappers)
                if isinstance(argv, ast.Name) and argv.id in params:
                    wrappers[f.name] = params.index(argv.id)
        if wrappers == before:
            break

    found: set[str] = set()

    def script(node: ast.expr) -> str:
        """The text of an sh -c script: a literal, or a name bound to one."""
        if isinstance(node, ast.Name):
            return "\n".join(t for v in bound.get(node.id, []) if (t := _literal(v)))
        return _literal(node) or ""

    def from_argv(argv: ast.expr, shell: bool) -> None:
        if (text := _literal(argv)) is not None:
            found.update(shell_programs(text) if shell else shlex.split(text)[:1])
        elif isinstance(argv, ast.List | ast.Tuple) and argv.elts:
            words = [_literal(e) for e in argv.elts]
            if words[0] is not None:
                found.add(Path(words[0]).name)
            for k, w in enumerate(words[:-2]):  # sh -c SCRIPT, also after unshare ... --
                if w is not None and Path(w).name in ("sh", "bash") and words[k + 1] == "-c":
                    found.add(Path(w).name)
                    found.update(shell_programs(script(argv.elts[k + 2])))
        elif isinstance(argv, ast.Name):
            for value in bound.get(argv.id, []):
                if not isinstance(value, ast.Constant):
                    from_argv(value, shell)

    for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call)):
        name = _dotted(call.func, imports)
        if name == "shutil.which" and call.args and (prog := _literal(call.args[0])):
            found.add(prog)
        elif name in _EXEC and call.args and (prog := _literal(call.args[0])):
            found.add(Path(prog).name)
        shell = any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value
                    for k in call.keywords)
        if (argv := argv_of(call, name, wrappers)) is not None:
            from_argv(argv, shell)
    for node in ast.walk(tree):
        # a function that returns a command line to run others under (unshare ... --)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.List) and node.value.elts:
            words = [_literal(e) for e in node.value.elts]
            if (words[0] and re.fullmatch(r"/?[a-z][\w./+-]*", words[0])
                    and any(w and w.startswith("-") for w in words[1:])):
                from_argv(node.value, False)
        # a shell script kept in a string
        elif (text := _literal(node) if isinstance(node, ast.Constant) else None) and (
                text.startswith("#!/bin/") or text.startswith("#!/usr/bin/")):
            found.update(shell_programs(text))
    return found, {f"{module}.{name}": idx for name, idx in wrappers.items()}


# --- what the repository calls -------------------------------------------------------------


def _makefile_programs(text: str) -> set[str]:
    """Commands of the Makefile's recipes, its $(VAR)s expanded from its own assignments."""
    values: dict[str, str] = dict(re.findall(r"(?m)^(\w+)\s*:?=\s*(.*?)\s*$", text))

    def expand(s: str) -> str:
        for _ in range(5):
            s = re.sub(r"\$\((\w+)\)", lambda m: values.get(m[1], m[1]), s)
        return s

    recipes = [expand(line[1:]) for line in text.splitlines() if line.startswith("\t")]
    return shell_programs("\n".join(recipes))


def _unit_programs() -> set[str]:
    from tracer import boot

    unit = boot.unit_text(exe="/usr/bin/kmodtrace")
    cmds = re.findall(r"(?m)^Exec\w*=[-@:+!]*(.*)$", unit)
    return set().union(*(shell_programs(c) for c in cmds))


def called_programs() -> dict[str, set[str]]:
    """Every program the code and scripts name, by where it is named."""
    where: dict[str, set[str]] = {}
    sources = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for p in sorted([*ROOT.glob("tracer/**/*.py"), *ROOT.glob("kmodlab/**/*.py")])}
    known: dict[str, int] = {}  # wrappers in any module (vm.run_step), to a fixed point
    while True:
        before = dict(known)
        for module, path in sources.items():
            where[str(path.relative_to(ROOT))], found = python_programs(
                path.read_text(), module, known)
            known.update(found)
        if known == before:
            break
    scripts = [*ROOT.glob("tracer/**/*.sh"), *ROOT.glob("kmodlab/**/*.sh"),
               *ROOT.glob("vm/**/*.sh"), ROOT / ".ci" / "run"]
    for path in sorted(scripts):
        where[str(path.relative_to(ROOT))] = shell_programs(path.read_text())
    where["Makefile"] = _makefile_programs((ROOT / "Makefile").read_text())
    where["kmodtrace-boot.service"] = _unit_programs()
    return where


# --- the scanner finds what it must --------------------------------------------------------

SAMPLE = '''
import os
import subprocess
from subprocess import Popen as P
import shutil

def _run(cmd, what):
    return subprocess.run(cmd, check=True)

def _job(argv):
    os.execvp(argv[0], argv)

def f(x):
    subprocess.run(["planted-run", "-x"], check=True)
    P(("planted-popen", x))
    _run(["planted-wrapper", x], "what")
    _job(["planted-exec", "a"])
    args = ["planted-bound", x]
    subprocess.check_output(args)
    subprocess.run("planted-shell --flag | planted-pipe", shell=True)
    subprocess.run(["/bin/sh", "-c", "planted-sh-c arg"])
    shutil.which("planted-which")
    subprocess.run([sys.executable, "-m", "x"])   # not a literal name
    subprocess.run(x)                             # nor this
    start(["record", "-o", x])                    # arguments of our own tracer

def prefix(d):
    script = 'planted-in-script "$0" && exec "$@"'
    return ["planted-prefix", "--opt", "--", "sh", "-c", script, d]

SCRIPT = """#!/bin/bash
planted-script-line --x
"""
'''


def test_scanner_finds_planted_calls() -> None:
    progs, wrappers = python_programs(SAMPLE, "pkg.sample")
    # f hands x to subprocess.run too
    assert wrappers == {"pkg.sample._run": 0, "pkg.sample._job": 0, "pkg.sample.f": 0}
    other = "from pkg import sample\nsample._run(['planted-elsewhere'], 'what')\n"
    assert python_programs(other, "pkg.other", wrappers)[0] == {"planted-elsewhere"}
    assert progs == {
        "planted-run", "planted-popen", "planted-wrapper", "planted-exec", "planted-bound",
        "planted-shell", "planted-pipe", "sh", "planted-sh-c", "planted-which",
        "planted-prefix", "planted-in-script", "bash", "planted-script-line"}


def test_shell_scanner() -> None:
    text = r'''#!/bin/bash
# a comment: notacommand here
export PATH=/usr/bin X=1
step() { printf '%s\n' "$*"; }
pkgs=(not-a-command other)
list=x; mapfile -t a < <(awk -F '\t' '{print}' "$list")
((${#a[@]})) || { echo "none" >&2; exit 1; }
[ "$(id -u)" = 0 ] || step "x"
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    pat*=*) tag=${arg%%=*}; /usr/sbin/modprobe "$tag";;
    other) continue;;
  esac
done
for _ in $(seq 10); do [ -e /x ] && break; sleep 0.1; done
mount -t proc proc /proc >/dev/null 2>&1 &
if ! dpkg-query -W x | grep -q y; then .venv/bin/pip install x; fi
$PYTHON -m tracer >log 2>&1 &
exec $REAL_INIT "$@"
'''
    assert shell_programs(text) == {"bash", "awk", "id", "cat", "modprobe", "seq", "sleep",
                                    "mount", "dpkg-query", "grep"}


# --- the list ------------------------------------------------------------------------------


def test_list_is_well_formed() -> None:
    rows = programs.load()
    names = [p.name for p in rows if p.name != "-"]
    assert len(names) == len(set(names)), "a program is listed twice"
    assert all(p.why for p in rows)
    assert not [p for p in rows if not p.debian and p.name == "-"]


def test_code_calls_only_listed_programs() -> None:
    listed = {Path(p.name).name for p in programs.load()}
    unlisted = {f"{prog} (in {where})" for where, progs in called_programs().items()
                for prog in progs - listed - SELF}
    assert not unlisted, f"add these to kmodlab/programs.tsv: {sorted(unlisted)}"


def test_scan_sees_the_known_calls() -> None:
    """A scan that found nothing would pass the test above: it must see these."""
    where = called_programs()
    assert {"systemctl"} <= where["tracer/boot.py"]
    assert {"sh", "mkdir", "mv"} <= where["kmodtrace-boot.service"]
    assert {"ip", "mount", "modprobe", "insmod", "rmmod", "make", "bash"} <= where[
        "kmodlab/storms.py"]
    assert {"apt-get", "apt-cache", "dpkg-query", "dpkg-deb", "depmod",
            "qemu-system-x86_64", "vng"} <= where["kmodlab/vm.py"]
    assert {"make", "tar", "apt-get"} <= where["kmodlab/oracle.py"]
    assert {"execsnoop-bpfcc"} <= where["kmodlab/benchguest.py"]
    assert {"dpkg-query", "apt-get", "awk", "python3"} <= where["vm/bootstrap.sh"]
    assert "make" in where[".ci/run"]


def _find(name: str) -> str | None:
    """NAME on PATH (root's sbin dirs too), or beside this Python (the venv's scripts)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin",
                            str(Path(sys.executable).parent)])
    if name.startswith("/"):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=path)


def test_every_listed_program_is_installed() -> None:
    missing = [f"{p.name} ({p.package})" for p in programs.load()
               if p.name != "-" and _find(p.name) is None]
    assert not missing, f"not installed (vm/bootstrap.sh installs them): {missing}"


def test_every_listed_package_is_installed() -> None:
    pkgs = programs.packages()
    status = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *pkgs],
                            capture_output=True, text=True, check=False).stdout
    ok = {ln.split()[0] for ln in status.splitlines() if ln.endswith("install ok installed")}
    assert not set(pkgs) - ok, f"not installed (vm/bootstrap.sh installs them): {set(pkgs) - ok}"


def test_bootstrap_installs_the_listed_packages() -> None:
    """bootstrap reads the list with awk: the same packages as the Python loader."""
    script = (ROOT / "vm" / "bootstrap.sh").read_text()
    m = re.search(r"mapfile -t pkgs < <\((awk .*?)\)\n", script)
    assert m, "bootstrap no longer reads kmodlab/programs.tsv with awk"
    out = subprocess.run(["bash", "-c", m[1].replace('"$list"', "kmodlab/programs.tsv")],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == programs.packages()


def test_lab_installs_from_the_list() -> None:
    assert set(oracle.BUILD_DEPS) >= {"flex", "bison", "bc", "libelf-dev", "libssl-dev",
                                      "dwarves", "xz-utils", "rsync", "cpio"}
    assert set(oracle.BUILD_DEPS) <= set(programs.packages())
    assert programs.packages("oracle") == oracle.BUILD_DEPS
    assert programs.packages("kernel") == ["linux-image-amd64", "linux-headers-amd64"]


# --- bootstrap's install path, with apt and dpkg stubbed (nothing on the system changes) ---

_STUBS = {
    # installed packages are the lines of $STATE
    "dpkg-query": 'p="${!#}"; grep -qx "$p" "$STATE" && printf "install ok installed"; exit 0',
    # logs its arguments; "install" marks its packages installed unless $APT_FAILS
    "apt-get": 'echo "$*" >>"$LOG"\n'
               'if [ "$1" != update ] && [ -z "${APT_FAILS:-}" ]; then\n'
               '  for a; do case "$a" in -*|install) ;; *) echo "$a" >>"$STATE";; esac; done\n'
               '  echo "Setting up x"\nfi',
    "id": "echo 0",
}


def _bootstrap(tmp: Path, installed: list[str], apt_fails: bool = False) -> tuple[int, str, str]:
    repo, stubs = tmp / "repo", tmp / "stubs"
    (repo / "vm").mkdir(parents=True, exist_ok=True)
    (repo / "kmodlab").mkdir(exist_ok=True)
    shutil.copy(ROOT / "vm" / "bootstrap.sh", repo / "vm")
    shutil.copy(ROOT / "kmodlab" / "programs.tsv", repo / "kmodlab")
    (repo / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    stubs.mkdir(exist_ok=True)
    for name, body in [*_STUBS.items(), (str(repo / ".venv" / "bin" / "python"), "exit 0"),
                       (str(repo / ".venv" / "bin" / "pip"), "exit 0")]:
        path = stubs / name if "/" not in name else Path(name)
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    (tmp / "state").write_text("".join(f"{p}\n" for p in installed))
    (tmp / "log").write_text("")
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STATE": str(tmp / "state"),
           "LOG": str(tmp / "log"), **({"APT_FAILS": "1"} if apt_fails else {})}
    p = subprocess.run(["bash", str(repo / "vm" / "bootstrap.sh")], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    return p.returncode, p.stderr, (tmp / "log").read_text()


def test_bootstrap_installs_what_is_missing_once(tmp_path: Path) -> None:
    pkgs = programs.packages()
    rc, err, apt = _bootstrap(tmp_path, [p for p in pkgs if p not in ("busybox-static", "udev")])
    assert rc == 0, err
    assert apt.splitlines() == ["update -q",
                                "install -y -q --no-install-recommends busybox-static udev"]
    rc, err, apt = _bootstrap(tmp_path, pkgs)  # a second run: nothing to do
    assert rc == 0, err
    assert apt == ""


def test_bootstrap_fails_when_apt_installs_nothing(tmp_path: Path) -> None:
    pkgs = programs.packages()
    rc, err, _ = _bootstrap(tmp_path, [p for p in pkgs if p != "busybox-static"], apt_fails=True)
    assert rc != 0
    assert "did not install: busybox-static" in err


# --- every PyPI package from one lock ------------------------------------------------------

LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, str]:
    """requirements.lock's name -> version; each entry pinned with == and sha256 hashes."""
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=\S)", LOCK.read_text()):
        if not entry.strip() or entry.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry)
        assert m, f"not pinned with ==: {entry.splitlines()[0]}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash: {m[0]}"
        pins[m[1].lower().replace("_", "-")] = m[2]
    return pins


def test_the_lock_pins_everything_pyproject_names() -> None:
    import tomllib

    pins = _locked()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*meta["project"]["dependencies"], *meta["build-system"]["requires"],
            *(r for extra in meta["project"]["optional-dependencies"].values() for r in extra)]
    names = {re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0].lower().replace("_", "-")
             for r in reqs}
    assert names - pins.keys() == set(), "make lock"


def test_the_venv_holds_what_the_lock_says() -> None:
    """What this run judges the code with is what the lock pins, to the version."""
    from importlib import metadata

    pins = _locked()
    differ = {}
    for name, version in pins.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            differ[name] = (version, have)
    assert not differ, f"(locked, installed): {differ}; run vm/bootstrap.sh"


def test_bootstrap_installs_only_from_the_lock() -> None:
    script = (ROOT / "vm" / "bootstrap.sh").read_text()
    installs = [line for line in script.splitlines() if re.search(r"\bpip install\b|"
                                                                 r"venv_pip install", line)]
    assert installs, "bootstrap installs no Python package"
    for line in installs:
        assert ("--require-hashes" in line and "-r requirements.lock" in line) or (
            "--no-deps" in line or "--dry-run" in line), line
        assert "--no-build-isolation" in line or "--require-hashes" in line, line
