#!/usr/bin/env bash
# Install what kmodtrace and its VM tests need on a Debian 12 machine, as root: every
# Debian package of kmodlab/programs.tsv (bcc, QEMU, busybox, the stable kernel with
# headers, kbuild and the oracle kernel's build tools, ...: the one list of the programs
# the tracer and the lab call), then a venv that sees Debian's bcc.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '[bootstrap] %s\n' "$*" >&2; }

list=kmodlab/programs.tsv
# column 2 of the rows (not comments), Debian packages only (pip:NAME is pyproject's), once each
mapfile -t pkgs < <(awk -F '\t' '!/^#/ && NF == 4 && $2 !~ /^pip:/ && !seen[$2]++ { print $2 }' "$list")
((${#pkgs[@]})) || { echo "bootstrap: no packages in $list" >&2; exit 1; }
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "bootstrap: run as root to install: ${missing[*]}" >&2; exit 1; }
  step "apt-get update"
  apt-get update -q >/dev/null
  step "installing ${missing[*]} (a few minutes on a fresh machine)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    | grep -E '^(Setting up|Unpacking) ' | sed 's/^/[apt] /' >&2 || true
  # apt's own failure is hidden by the filter above: ask dpkg what is still missing
  still=()
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || still+=("$p")
  done
  ((${#still[@]} == 0)) || { echo "bootstrap: apt-get did not install: ${still[*]}" >&2; exit 1; }
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv from /usr/bin/python3 (with Debian's bcc)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# Every PyPI package comes from requirements.lock, pinned with hashes (`make lock` writes
# it): a new release of a tool cannot turn main red. --no-deps: the lock is complete, and
# pip check below proves it. kmodtrace itself goes in without build isolation, so that
# the locked setuptools builds it and nothing unlocked is fetched.
step "installing the locked Python packages (requirements.lock) into .venv"
venv_pip() { .venv/bin/pip --disable-pip-version-check -q "$@"; }
venv_pip install --require-hashes --no-deps -r requirements.lock
venv_pip install --no-deps --no-build-isolation -e .
# The lock is complete when pip, offline, finds every requirement of every extra installed
# (pip check would also judge Debian's own packages, which the venv sees).
PIP_FIND_LINKS='' venv_pip install --dry-run --no-index --no-build-isolation -e '.[vm,test,dev]' \
  >/dev/null || { echo "bootstrap: requirements.lock misses a package (fix: make lock)" >&2; exit 1; }
.venv/bin/python -c 'import bcc' || { echo "bootstrap: bcc is not importable" >&2; exit 1; }
step "ready"
