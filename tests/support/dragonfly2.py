"""Fake Dragonfly 2 managers (``local/dragonfly2_manager.py``) for the tests of the Dragonfly 2 driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local.dragonfly2_manager import FakeDragonfly2Manager


@contextmanager
def manager_starter(
    root: Path, token: str, **defaults: Any
) -> Iterator[Callable[..., FakeDragonfly2Manager]]:
    """A function that starts a fake manager accepting ``token`` (its keyword arguments over
    ``defaults``), each with a cache of its own below ``root``; every one is stopped at the end."""
    started: list[FakeDragonfly2Manager] = []

    def start(**options: Any) -> FakeDragonfly2Manager:
        manager = FakeDragonfly2Manager(root / f"cache-{len(started)}", token, **{**defaults, **options})
        started.append(manager.start())
        return manager

    try:
        yield start
    finally:
        for manager in started:
            manager.stop()
