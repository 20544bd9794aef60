"""JSON text from outside the service, decoded without a crash: one ``loads`` for every body a
caller, a registry or a supernode sends.

Its own module, importing nothing but the standard library, so that the API functions can decode
request bodies with it without loading the HTTP adapters (see tests/unit/test_cold_start_imports.py).
"""

from __future__ import annotations

import json
from typing import Any

NESTED_TOO_DEEPLY = "the JSON document is nested too deeply"


def loads(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError: a document nested deeper than the parser
    recurses raises RecursionError otherwise, which no caller expects of an answer. A JSON syntax
    error stays a ``json.JSONDecodeError`` (a ValueError with a position)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(NESTED_TOO_DEEPLY) from None
