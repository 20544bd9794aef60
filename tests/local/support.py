"""Helpers of the local stack's tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_TEMPLATE = FIXTURES / "template.yaml"
PROJECT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
    """The first truthy value ``probe`` returns within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing after {timeout}s")
        time.sleep(interval)


class Sink:
    """What the fixture recorder handler wrote: one entry per record it was handed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self, record_id: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
        return [e for e in lines if record_id is None or e["id"] == record_id]
