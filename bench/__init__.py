"""Benchmarks: ``python -m bench.<name>`` runs one, prints a table and writes ``bench/results/<name>.json``.

Each figure in a result file is ``{"value", "target", "met", ...}``, so that a reader (or CI) can
tell at a glance whether the service still meets what it promises.
"""

import sys
from pathlib import Path

# The shared layer, importable as on Lambda (/opt/python): what the benchmarks measure.
LAYER = Path(__file__).resolve().parent.parent / "layers" / "shared"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))

RESULTS = Path(__file__).resolve().parent / "results"
