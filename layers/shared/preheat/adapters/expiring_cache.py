"""One cache for what is fetched from a server and reused while it is fresh: registry Bearer tokens
(``registry_auth``) and Dragonfly 2 job answers (``dragonfly2``).

A warm Lambda keeps it from one invocation to the next, so it is bounded (the least recently stored
entry goes first), and its fetch locks are a fixed set of stripes rather than one lock per key: a
fetch that raises releases its stripe (``with``), and no per-key lock is left behind, held or not,
for a key whose value never arrived.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FETCH_LOCK_STRIPES = 16
# Whether an entry of ``lifetime`` seconds, stored ``age`` seconds ago, may still be served.
Freshness = Callable[[float, float], bool]


def alive(age: float, lifetime: float) -> bool:
    """Served until its lifetime has passed."""
    return age < lifetime


class ExpiringCache(Generic[K, V]):
    """Values by key, each served while ``fresh(age, lifetime)`` holds, at most ``size`` of them."""

    def __init__(self, clock: Callable[[], float], size: int, fresh: Freshness = alive) -> None:
        self._clock = clock
        self._size = size
        self._fresh = fresh
        self._entries: OrderedDict[K, tuple[V, float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetch_locks = [threading.Lock() for _ in range(FETCH_LOCK_STRIPES)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def fetching(self, key: K) -> threading.Lock:
        """The lock to hold while fetching the value of ``key``: threads that need it at once (a
        token expiring under 16 blob requests, a job read for each of its URLs) fetch it once."""
        return self._fetch_locks[hash(key) % len(self._fetch_locks)]

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, stored_at, lifetime = entry
            if not self._fresh(self._clock() - stored_at, lifetime):
                del self._entries[key]
                return None
            return value

    def put(self, key: K, value: V, lifetime: float) -> None:
        with self._lock:
            self._entries[key] = (value, self._clock(), lifetime)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def discard(self, key: K, value: V) -> None:
        """Forget ``key`` if it still holds ``value`` (another thread may have replaced it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == value:
                del self._entries[key]

    def load(self, key: K, fetch: Callable[[], tuple[V, float]]) -> V:
        """The fresh value of ``key``, else one ``fetch`` returns (with its lifetime), stored. One
        thread fetches while the others wait for it; a fetch that raises stores nothing."""
        value = self.get(key)
        if value is not None:
            return value
        with self.fetching(key):
            value = self.get(key)  # another thread may have fetched it while this one waited
            if value is None:
                value, lifetime = fetch()
                self.put(key, value, lifetime)
            return value
