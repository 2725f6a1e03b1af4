#!/usr/bin/env bash
# Create .venv if missing and install requirements.txt (and the project, editable) into it,
# skipping the install when requirements.txt and pyproject.toml have not changed since the
# last successful one (a stamp in .venv).
# PYTHON picks the interpreter (default: python3.11, else python3; 3.11+ required).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here="$root/scripts"
venv="$root/.venv"
requirements="$root/requirements.txt"
stamp="$venv/.requirements.sha256"

pick_python() {
    if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"; return; fi
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
    done
    echo "no python3 found: install Python 3.11 or set PYTHON" >&2
    exit 1
}

if [[ ! -x $venv/bin/python ]]; then
    python=$(pick_python)
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "$python is older than 3.11" >&2; exit 1; }
    # Debian's python3 ships venv/ensurepip separately (python3.X-venv).
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        "$here/apt-install.sh" "python${version}-venv"
    fi
    echo "==> creating $venv with $python" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

wanted=$(cat "$requirements" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    exit 0
fi
echo "==> installing requirements.txt into $venv" >&2
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$venv/bin/python" -m pip install -q -r "$requirements" </dev/null
# The project itself, editable, for its console command (saga-dlq); no new packages.
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" </dev/null
echo "$wanted" >"$stamp"
