"""Requests side by side where one failure decides: the first failure is raised at once, and the
work not started yet is dropped (a resolution missing one blob is a failed resolution)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from preheat.errors import PermanentFailure, PreheatError

T = TypeVar("T")
R = TypeVar("R")


def map_fail_fast(
    function: Callable[[T], R], items: Sequence[T], size: int, cancelled: threading.Event, name: str
) -> list[R]:
    """``function`` over ``items`` on a pool of ``size`` threads named ``name``; on the first failure
    ``cancelled`` is set (work under way sees it and stops retrying) and that failure is raised."""
    if len(items) <= 1:
        return [function(item) for item in items]
    pool = ThreadPoolExecutor(min(size, len(items)), thread_name_prefix=name)
    try:
        futures: list[Future[R]] = [pool.submit(function, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                cancelled.set()
                raise first_failure(futures, done)
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def first_failure(futures: list[Future[Any]], done: set[Future[Any]]) -> BaseException:
    """The first failed future in submission order, preferring a permanent failure: retrying the
    whole task cannot help while one blob is missing for good."""
    errors = [f.exception() for f in futures if f in done and f.exception() is not None]
    for error in errors:
        if isinstance(error, PermanentFailure):
            return error
    for error in errors:
        if isinstance(error, PreheatError):
            return error
    first = errors[0]
    assert first is not None
    return first
