#!/usr/bin/env bash
# Install Debian packages without any prompt: `scripts/apt-install.sh PACKAGE...`.
# Uses sudo only when not root; works with no terminal (stdin may be /dev/null).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get not found: install $* with your system's package manager" >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "need root or sudo to install $*" >&2
        exit 1
    fi
    # -n: never prompt for a password (there may be no terminal); fail instead.
    sudo=(sudo -n)
fi

echo "==> installing Debian packages: $*" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null
