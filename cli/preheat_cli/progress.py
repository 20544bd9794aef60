"""How ``--wait`` shows a task progressing: blobs warmed (``layers.succeeded``) out of ``layers.total``.

On a terminal a rich progress bar redraws in place; elsewhere (a CI log, a pipe) one plain line is
printed each time something changes, since a redrawn bar would fill a log with escape codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

RUNNING = "RUNNING"
SUCCESS = "SUCCESS"
FAIL = "FAIL"


class ProgressView(Protocol):
    def start(self) -> None: ...

    def update(self, data: Mapping[str, Any]) -> None:
        """``data`` is a status answer's ``data``."""

    def stop(self) -> None: ...


def counts(data: Mapping[str, Any]) -> tuple[int | None, int, int]:
    """(total, succeeded, failed) blobs; total is None until the worker has resolved the blobs.

    A task that ended SUCCESS counts as every blob warmed even if its answer lists none, so the bar
    always ends at 100% on success.
    """
    layers = data.get("layers")
    total: int | None = None
    succeeded = failed = 0
    if isinstance(layers, Mapping):
        total = _int(layers.get("total"))
        succeeded = _int(layers.get("succeeded")) or 0
        failed = _int(layers.get("failed")) or 0
    if data.get("status") == SUCCESS:
        total = total or 1
        succeeded = total
    return total, succeeded, failed


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe(data: Mapping[str, Any]) -> str:
    """``4/4 blobs warmed (100%)``, ``1/4 blobs warmed (25%), 1 failed``, or ``resolving blobs``."""
    total, succeeded, failed = counts(data)
    if total is None:
        return "resolving blobs"
    percent = 100 * succeeded // total if total else 100
    text = f"{succeeded}/{total} blobs warmed ({percent}%)"
    return f"{text}, {failed} failed" if failed else text


class BarView:
    """A rich progress bar on ``console``; drawn even off a terminal if the console is forced to."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.fields[status]:<7}", markup=False),
            # rich's own "finished" colour is grey on 16-colour terminals: a full bar would look empty.
            BarColumn(finished_style="green"),
            MofNCompleteColumn(),
            TextColumn("blobs"),
            TaskProgressColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task("preheat", total=None, status=RUNNING, note="resolving")

    def start(self) -> None:
        self._progress.start()

    def update(self, data: Mapping[str, Any]) -> None:
        total, succeeded, failed = counts(data)
        status = str(data.get("status") or RUNNING)
        if total is None:
            note = "resolving"
        elif failed:
            note = f"{failed} failed"
        else:
            note = ""
        # The status is the server's word: its columns take no markup, so it is shown as it is.
        self._progress.update(self._task, total=total, completed=succeeded, status=status, note=note)
        if status != RUNNING:
            self._progress.refresh()  # the final frame, whatever the refresh timer last drew

    def stop(self) -> None:
        self._progress.stop()


class PlainView:
    """A line per change, with the seconds since the wait began."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._started = clock()
        self._last: str | None = None

    def start(self) -> None:
        self._started = self._clock()

    def update(self, data: Mapping[str, Any]) -> None:
        line = f"{data.get('status') or RUNNING:<7} {describe(data)}"
        if line != self._last:
            self._last = line
            print(f"[{self._clock() - self._started:6.1f}s] {line}", file=self._out, flush=True)

    def stop(self) -> None:
        pass


class NoView:
    """For ``--json``: stdout carries the final answer and nothing else."""

    def start(self) -> None:
        pass

    def update(self, data: Mapping[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass


def make_view(mode: str, out: TextIO) -> ProgressView:
    """``bar``, ``plain``, or ``auto``: a bar when rich sees a terminal (rich's ``TTY_COMPATIBLE=1``
    or ``FORCE_COLOR`` say there is one where it cannot tell)."""
    if mode == "plain":
        return PlainView(out)
    console = Console(file=out, force_terminal=True if mode == "bar" else None)
    if mode == "auto" and not console.is_terminal:
        return PlainView(out)
    return BarView(console)
