"""`python -m dlq`: from the project's virtualenv, or from any Python 3.11 in the project's
folder (it then runs itself again with the virtualenv's Python, which has the packages)."""

import os
import sys
from pathlib import Path

try:
    from dlq.cli import main
except ImportError as exc:
    venv = Path(__file__).resolve().parent.parent / ".venv"
    venv_python = venv / "bin" / "python"
    # sys.prefix, not the interpreter's path: the venv's python links to the same binary.
    if venv_python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(venv_python), [str(venv_python), "-m", "dlq", *sys.argv[1:]])
    sys.exit(f"error: {exc.name} is not installed: run `make venv`, or use .venv/bin/saga-dlq")

main()
