"""One cache for registry tokens and Dragonfly 2 job answers (adapters.expiring_cache): entries
served while fresh on an injected clock, bounded, fetched once among threads, and a fetch that
raises leaves nothing behind: no entry, no lock held, so a warm Lambda's next read proceeds."""

from __future__ import annotations

from typing import Any

import pytest

from preheat.adapters.dragonfly2 import MAX_CACHED_JOBS, Dragonfly2Driver
from preheat.adapters.expiring_cache import FETCH_LOCK_STRIPES, ExpiringCache
from preheat.errors import TransientFailure
from preheat.models import BlobState
from preheat.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def no_lock_is_held(cache: ExpiringCache[Any, Any]) -> bool:
    locks = list(
        {id(lock): lock for lock in (cache.fetching(n) for n in range(FETCH_LOCK_STRIPES * 4))}.values()
    )
    free = [lock.acquire(blocking=False) for lock in locks]
    for lock, taken in zip(locks, free, strict=True):
        if taken:
            lock.release()
    return all(free)


def test_an_entry_is_served_until_its_lifetime_passes_then_fetched_again() -> None:
    clock = Clock()
    cache: ExpiringCache[str, str] = ExpiringCache(clock, size=4)
    fetched: list[str] = []

    def fetch() -> tuple[str, float]:
        fetched.append(f"v{len(fetched)}")
        return fetched[-1], 10.0

    assert cache.load("k", fetch) == "v0"
    clock.now += 9.9
    assert cache.load("k", fetch) == "v0"
    clock.now += 0.1
    assert cache.load("k", fetch) == "v1"


def test_a_fetch_that_raises_stores_nothing_and_holds_no_lock() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(Clock(), size=4)

    def broken() -> tuple[str, float]:
        raise TransientFailure("manager down")

    with pytest.raises(TransientFailure):
        cache.load("job", broken)

    assert no_lock_is_held(cache)
    assert len(cache) == 0
    assert cache.load("job", lambda: ("answer", 1.0)) == "answer"


def test_the_cache_keeps_at_most_its_size_and_a_fixed_set_of_locks() -> None:
    cache: ExpiringCache[int, int] = ExpiringCache(Clock(), size=3)
    for key in range(10):
        cache.put(key, key, 60.0)
    assert len(cache) == 3
    assert [cache.get(key) for key in (6, 7, 8, 9)] == [None, 7, 8, 9]
    assert len({id(cache.fetching(key)) for key in range(1000)}) == FETCH_LOCK_STRIPES


class FlakyManager(Dragonfly2Driver):
    """A driver whose first job read fails (the manager unreachable), and whose others answer."""

    def __init__(self) -> None:
        super().__init__(
            Settings(supernodes=("http://manager:8080",), supernode_api="dragonfly2", dragonfly2_token="t")
        )
        self.reads = 0

    def _read_job(self, target: str, job_id: str, token: str) -> dict[str, Any]:
        self.reads += 1
        if self.reads == 1:
            raise TransientFailure("Dragonfly 2 manager http://manager:8080 did not answer")
        return {
            "id": int(job_id),
            "state": "SUCCESS",
            "args": {"urls": ["http://origin/a", "http://origin/b"]},
            "result": {"job_states": [{"results": [{"success_tasks": [{"url": "http://origin/a"}]}]}]},
        }


def test_a_failed_job_read_leaves_no_lock_held_and_the_next_read_of_that_job_proceeds() -> None:
    driver = FlakyManager()

    with pytest.raises(TransientFailure):
        driver.status("http://manager:8080", "7#0")

    assert no_lock_is_held(driver._answers)
    # The same warm driver, the same job: read again, not stuck behind the failed read.
    assert driver.status("http://manager:8080", "7#0").state is BlobState.SUCCESS
    assert driver.status("http://manager:8080", "7#1").state is BlobState.FAILED
    assert driver.reads == 2  # the second URL's look reused the answer
    assert len(driver._answers) <= MAX_CACHED_JOBS
