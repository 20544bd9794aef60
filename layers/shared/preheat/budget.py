"""What is left of a worker step's time: the invocation's, less a margin (see worker.py)."""

from __future__ import annotations

import time


class StepBudget:
    """What is left of a step's time (None: unbounded), measured from when the step began."""

    def __init__(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + max(0.0, seconds)

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())
