"""Makes ``preheat_cli`` importable from the work tree when it is not installed (``make test`` installs
it editable; a bare ``pytest`` on a fresh checkout may not have)."""

import sys
from pathlib import Path

CLI_DIR = Path(__file__).resolve().parents[2] / "cli"
if str(CLI_DIR) not in sys.path:
    sys.path.append(str(CLI_DIR))
