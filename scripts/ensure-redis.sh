#!/usr/bin/env bash
# Make sure redis-server and redis-cli are on PATH, installing Debian's redis-server
# package if they are missing. Used by `make test` and scripts/run.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    exit 0
fi
"$here/apt-install.sh" redis-server
# The package starts a system-wide Redis on 6379 through its service scripts where an init
# system runs; we never use that one (run.sh and the tests start their own).
command -v redis-server >/dev/null 2>&1 || { echo "redis-server still missing" >&2; exit 1; }
