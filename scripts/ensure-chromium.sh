#!/usr/bin/env bash
# Make sure Debian's chromium is installed, for the console's browser test (Playwright drives
# it through CHROMIUM=/usr/bin/chromium; its own browser download does not work here).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
browser=${CHROMIUM:-/usr/bin/chromium}

if [[ -x $browser ]]; then
    exit 0
fi
"$here/apt-install.sh" chromium
[[ -x $browser ]] || { echo "chromium still missing at $browser" >&2; exit 1; }
