"""Tools for running the Preheat service locally, without AWS or a Dragonfly cluster."""

import sys
from pathlib import Path

# The shared layer, importable as on Lambda (/opt/python): the local tools use its code where they
# must agree with the service (the authorizer's key extraction, Dragonfly's default filters).
SHARED_LAYER_DIR = Path(__file__).resolve().parent.parent / "layers" / "shared"
if str(SHARED_LAYER_DIR) not in sys.path:
    sys.path.insert(0, str(SHARED_LAYER_DIR))
