"""The life of warm content after a preheat: verify which peers hold a task's blobs now, and evict
them from the cluster.

Every entry point (API routes, CLI through the API, keep-warm, the rollout gate) calls
``LifecycleService``; what a target kind can say or delete is its driver's affair
(``SupernodeDriver.holders`` and ``evict``). A verify asks the cluster, never the stored progress,
and a target that does not answer is named in ``unreachable`` with its peers' ``finished``
unknown: a silent supernode never makes a blob look gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from preheat.errors import DependencyFailure
from preheat.models import BlobEviction, BlobProgress, Task, TaskStatus, isoformat, utcnow
from preheat.models.answers import without_userinfo
from preheat.ports import EventPublisher, Holding, PeerSeen, SupernodeDriver, TaskStore
from preheat.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["BlobSeen", "LifecycleService", "PeerSeen", "Verification", "eviction_answer"]

# The msg of a RUNNING task stopped by an eviction (the worker's next step finds it ended).
# The longest per-blob outcome recorded (a target's reason, already scrubbed by its driver).
MAX_OUTCOME_CHARS = 300
STOPPED_BY_EVICTION = "stopped: evicted (DELETE /api/preheat/{id}) while it was running"


@dataclass(frozen=True)
class BlobSeen:
    """One recorded blob on one target, as a verify found it."""

    label: str
    digest: str | None
    node_task_id: str | None
    target: str
    peers: tuple[PeerSeen, ...]
    # The peers the task's scope asks for hold it finished; None: unknown (unreachable, pending).
    warm: bool | None
    error: str | None

    def to_api(self) -> dict[str, Any]:
        return {
            "digest": self.digest or self.label,
            "nodeTaskId": self.node_task_id,
            "target": without_userinfo(self.target),
            "peers": [{"host": p.host, "ip": p.ip, "finished": p.finished} for p in self.peers],
            "warm": self.warm,
            **({"error": self.error} if self.error else {}),
        }


@dataclass(frozen=True)
class Verification:
    """What the cluster says now about a task's blobs."""

    checked_at: datetime
    blobs: tuple[BlobSeen, ...]
    # Some target is still working out its answer (a Dragonfly 2 manager's get_task jobs).
    pending: bool
    # The targets that did not answer (their peers' ``finished`` is unknown).
    unreachable: tuple[str, ...]

    def _by_label(self) -> dict[str, list[BlobSeen]]:
        grouped: dict[str, list[BlobSeen]] = {}
        for blob in self.blobs:
            grouped.setdefault(blob.label, []).append(blob)
        return grouped

    @property
    def layers_total(self) -> int:
        return len(self._by_label())

    @property
    def layers_warm(self) -> int:
        """Distinct blobs warm on every target they were sent to."""
        return sum(all(b.warm is True for b in seen) for seen in self._by_label().values())

    def _finished_hosts(self, seen: list[BlobSeen]) -> set[str]:
        return {peer.host for blob in seen for peer in blob.peers if peer.finished is True}

    @property
    def peers_with_every_layer(self) -> tuple[str, ...]:
        """The hosts holding every blob of the task finished, sorted."""
        groups = list(self._by_label().values())
        if not groups:
            return ()
        common = self._finished_hosts(groups[0])
        for seen in groups[1:]:
            common &= self._finished_hosts(seen)
        return tuple(sorted(common))

    def warm_on(self, min_peers: int | None = None) -> bool:
        """Every blob warm per its task's scope, or with ``min_peers`` finished on at least that
        many peers. False while pending, or while any blob is unknown (a gate must not open on a
        guess; with ``min_peers``, only finished peers that answered count)."""
        if self.pending or not self.blobs:
            return False
        groups = self._by_label().values()
        if min_peers is None:
            return all(blob.warm is True for blob in self.blobs)
        # Finished peers that answered are a lower bound: an unreachable target can only add to it.
        return all(len(self._finished_hosts(seen)) >= min_peers for seen in groups)

    def to_api(self) -> dict[str, Any]:
        return {
            "checkedAt": isoformat(self.checked_at),
            "blobs": [blob.to_api() for blob in self.blobs],
            "summary": {
                "layersWarm": self.layers_warm,
                "layersTotal": self.layers_total,
                "peersWithEveryLayer": list(self.peers_with_every_layer),
            },
            "pending": self.pending,
            "unreachable": [without_userinfo(target) for target in self.unreachable],
        }


class LifecycleService:
    def __init__(
        self,
        store: TaskStore,
        driver: SupernodeDriver,
        settings: Settings,
        events: EventPublisher | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._driver = driver
        self._settings = settings
        self._events = events
        self._clock = clock

    def verify(self, task: Task) -> Verification:
        """Ask the cluster now which peers hold each blob the task sent (every target it went to)."""
        blobs = _askable(task.blobs)
        holdings = self._driver.holders(blobs, task.targeting) if blobs else []
        seen = tuple(_seen(blob, holding) for blob, holding in zip(blobs, holdings, strict=True))
        unreachable = tuple(dict.fromkeys(h.unreachable for h in holdings if h.unreachable))
        return Verification(
            checked_at=self._clock(),
            blobs=seen,
            pending=any(h.pending for h in holdings),
            unreachable=unreachable,
        )

    def evict(self, task: Task) -> Task:
        """Take the task's blobs out of the cluster, record when and what happened to each, and
        announce it. Idempotent: a task already evicted answers as it is.

        A RUNNING task is first ended (FAIL, through the store's conditional save, its check
        sequence moved on) so that the worker's next step finds it over and sends nothing more."""
        if task.evicted_at is not None:
            return task
        # Asked with no blob first, a target kind that cannot evict refuses (NotSupported) before a
        # RUNNING task is stopped for nothing.
        self._driver.evict(())
        task = self._stop(task)
        blobs = _askable(task.blobs)
        outcomes = self._driver.evict(blobs) if blobs else []
        evicted = replace(
            task,
            evicted_at=self._clock(),
            evictions=tuple(
                BlobEviction(blob.label, blob.target, outcome[:MAX_OUTCOME_CHARS])
                for blob, outcome in zip(blobs, outcomes, strict=True)
            ),
        )
        if not self._store.record_eviction(evicted):
            # Another DELETE got there first: its record stands.
            return self._store.get(task.task_id) or evicted
        if self._events is not None:
            try:
                self._events.task_evicted(evicted)
            except DependencyFailure as exc:
                logger.error("task %s was evicted, but its event was not put: %s", task.task_id, exc)
        return evicted

    def _stop(self, task: Task) -> Task:
        for _ in range(3):
            if task.status.terminal:
                return task
            stopped = replace(
                task,
                status=TaskStatus.FAIL,
                finished_at=self._clock(),
                message=STOPPED_BY_EVICTION,
                check_seq=task.check_seq + 1,
            )
            if self._store.save(stopped, expected_check_seq=task.check_seq):
                if self._events is not None:
                    try:
                        self._events.task_finished(stopped)
                    except DependencyFailure as exc:
                        logger.error("task %s was stopped, but its event was not put: %s", task.task_id, exc)
                return stopped
            # A worker step moved the task meanwhile: read it again and stop that.
            task = self._store.get(task.task_id) or task
        raise DependencyFailure(f"task {task.task_id} kept moving while it was being stopped: try again")


def _askable(blobs: tuple[BlobProgress, ...]) -> list[BlobProgress]:
    """The recorded blobs a target can be asked about: those with an id to ask by."""
    return [blob for blob in blobs if blob.supernode_task_id or blob.node_task_id or blob.url]


def _seen(blob: BlobProgress, holding: Holding) -> BlobSeen:
    return BlobSeen(
        label=blob.label,
        digest=blob.digest,
        node_task_id=blob.node_task_id or blob.supernode_task_id,
        target=blob.target,
        peers=holding.peers,
        warm=None if holding.pending or holding.unreachable else holding.warm,
        error=holding.error,
    )


def eviction_answer(task: Task) -> dict[str, Any]:
    """The DELETE answer's ``data``: the task's status answer with ``evictedAt`` and each blob's
    outcome per target (its ``evictions``)."""
    data = task.to_api(detail=True)
    data.pop("blobs", None)  # the verify answer lists the blobs; this one says what happened to them
    return data
