"""Make the shared layer importable the way Lambda does (/opt/python), for tests and tools."""

import sys
from pathlib import Path

LAYER = Path(__file__).parent / "layers" / "shared"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))

pytest_plugins = ["tests.support.fixtures"]
