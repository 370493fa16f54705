#!/usr/bin/env bash
# Install what kmodtrace and its VM tests need on a Debian 12 machine, as root:
# bcc, QEMU, the stable kernel with headers (the VM boots it), kbuild tools for
# the storm module, then a venv that sees Debian's bcc.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '[bootstrap] %s\n' "$*" >&2; }

pkgs=(python3-bpfcc bpfcc-tools python3-venv qemu-system-x86 busybox-static kmod iproute2 make gcc systemd
      linux-image-amd64 linux-headers-amd64)
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
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv from /usr/bin/python3 (with Debian's bcc)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
step "installing kmodtrace and its Python dependencies into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e '.[vm,test]'
.venv/bin/python -c 'import bcc' || { echo "bootstrap: bcc is not importable" >&2; exit 1; }
step "ready"
