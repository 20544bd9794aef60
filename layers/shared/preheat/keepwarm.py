"""Keep warm: verify a kept task on its schedule, and re-warm only what the peers lost.

A request's ``keepWarm`` (``every``, ``until``) puts the task in the tasks table's sparse
``KeepWarmIndex`` under its next check time. The sweeper (every 5 minutes) asks this module for
the due checks through that index, never the table, and for each:

1. moves the task's next check one period on, conditionally on the time it found (of two sweeps
   that found the same check, one runs it);
2. verifies the task (``LifecycleService.verify``: the cluster asked now, not the stored progress);
3. re-creates each blob a target no longer holds, on that target, through the driver; a Dragonfly 1
   supernode keeps the preheat record of a blob it evicted and answers a new create 208 with
   nothing downloaded, so the driver's evict removes the record first;
4. puts a ``Preheat Task Rewarmed`` event naming what was missing, and records the check.

A target that does not answer is "unknown", never "gone": nothing is re-created on its account.
The check re-creates blobs with no credentials of its own: a request's ``header`` is never stored,
so the peers fetch with theirs (dfdaemon's registry configuration), as with a stored credential
the registry cannot scope (see preheat.handover). A task past ``until``, or evicted, stops being
kept: it leaves the index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from preheat.errors import DependencyFailure, PreheatError, TransientFailure
from preheat.models import Blob, BlobProgress, BlobState, Task, TaskStatus, utcnow
from preheat.models.keepwarm import MIN_EVERY, PARTIAL, REWARMED, UNKNOWN, WARM, KeepWarm, KeepWarmCheck
from preheat.ports import EVICTED, KeepWarmStore, RewarmPublisher, SupernodeDriver, TaskStore

if TYPE_CHECKING:
    from preheat.lifecycle import BlobSeen, Verification

logger = logging.getLogger(__name__)

# The checks one sweep runs at most: each verifies its task and may re-create blobs, within the
# sweeper's timeout; the rest stay due in the index, and the next sweep (5 minutes on) runs them.
MAX_CHECKS_PER_SWEEP = 20
CHECKED, STOPPED, POSTPONED, SKIPPED = "checked", "stopped", "postponed", "skipped"


class Verifier(Protocol):
    def verify(self, task: Task) -> Verification: ...


class Rewarmer(Protocol):
    def rewarm(self, task: Task, progress: BlobProgress, blob: Blob) -> BlobState:
        """Make ``progress.target`` download ``blob`` (the recorded ``progress``) again, removing
        first what would keep it from doing so."""


@dataclass(frozen=True)
class KeepWarmRun:
    """What one sweep's keep-warm pass did, per task id."""

    checked: tuple[str, ...] = ()
    rewarmed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    stopped: tuple[str, ...] = ()
    postponed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "checked": list(self.checked),
            "rewarmed": {task_id: list(missing) for task_id, missing in self.rewarmed},
            "stopped": list(self.stopped),
            "postponed": list(self.postponed),
            "failed": list(self.failed),
        }


class KeepWarmer:
    def __init__(
        self,
        store: TaskStore,
        schedule: KeepWarmStore,
        verifier: Verifier,
        rewarmer: Rewarmer,
        events: RewarmPublisher,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._schedule = schedule
        self._verifier = verifier
        self._rewarmer = rewarmer
        self._events = events
        self._clock = clock

    def run_due(self) -> KeepWarmRun:
        """Run every due check (at most MAX_CHECKS_PER_SWEEP). One that fails is logged and left
        due (its next check moved on: a failing target is not hammered every 5 minutes)."""
        now = self._clock()
        outcomes: dict[str, list[str]] = {CHECKED: [], STOPPED: [], POSTPONED: [], SKIPPED: []}
        rewarmed: list[tuple[str, tuple[str, ...]]] = []
        failed: list[str] = []
        for task_id in self._schedule.due(now, MAX_CHECKS_PER_SWEEP):
            try:
                outcome, missing = self.check(task_id, now)
            except (PreheatError, OSError) as exc:
                logger.error("keep-warm check of task %s failed: %s", task_id, exc)
                failed.append(task_id)
                continue
            outcomes[outcome].append(task_id)
            if missing:
                rewarmed.append((task_id, missing))
        return KeepWarmRun(
            tuple(outcomes[CHECKED]),
            tuple(rewarmed),
            tuple(outcomes[STOPPED]),
            tuple(outcomes[POSTPONED]),
            tuple(failed),
        )

    def check(self, task_id: str, now: datetime) -> tuple[str, tuple[str, ...]]:
        """Run the task's check if it is due: its outcome, and the blobs it found missing."""
        task = self._store.get(task_id)
        kept = task.keep_warm if task is not None else None
        if task is None or kept is None or kept.next_check_at is None or not kept.due(now):
            return SKIPPED, ()
        stop = self._stop_reason(task, kept, now)
        if stop is not None:
            self._schedule.record(task_id, kept.stop(stop))
            logger.info("task %s is no longer kept warm: %s", task_id, stop)
            return STOPPED, ()
        if not self._schedule.claim(task_id, kept.next_check_at, now + kept.every):
            return SKIPPED, ()  # another sweep runs this check
        if task.status is TaskStatus.RUNNING:
            # Nothing to keep yet: the preheat itself is still warming; look again a period on.
            return POSTPONED, ()
        seen = self._verifier.verify(task)
        missing = [blob for blob in seen.blobs if blob.warm is False]
        names = tuple(f"{blob.label}@{blob.target}" for blob in missing)
        not_rewarmed = tuple(
            name for blob, name in zip(missing, names, strict=True) if not self._rewarm(task, blob)
        )
        if not_rewarmed:
            result = PARTIAL
        elif missing:
            result = REWARMED
        elif seen.pending or seen.unreachable or any(blob.warm is None for blob in seen.blobs):
            result = UNKNOWN
        else:
            result = WARM
        check = KeepWarmCheck(now, result, names)
        after = kept.after(check)
        if seen.pending and after.next_check_at is not None:
            # A Dragonfly 2 manager answers a verify through jobs its next refresh writes (about 30 s):
            # look again at the next sweep rather than a whole period later.
            after = replace(after, next_check_at=min(after.next_check_at, now + MIN_EVERY))
        if missing:
            try:
                self._events.task_rewarmed(task, names, not_rewarmed)
            except DependencyFailure as exc:
                # The check is done and recorded; the event is news, not state: logged, not retried.
                logger.error("task %s re-warmed %s, but its event was not put: %s", task_id, names, exc)
        self._schedule.record(task_id, after)
        logger.info(
            "keep-warm check of task %s: %s",
            task_id,
            result,
            extra={"missing": list(names), "failed": list(not_rewarmed)},
        )
        return CHECKED, names

    @staticmethod
    def _stop_reason(task: Task, kept: KeepWarm, now: datetime) -> str | None:
        if task.evicted_at is not None:
            return "evicted"
        if now >= kept.until:
            return "until reached"
        if task.status.terminal and not task.blobs:
            # It ended before any blob was sent (an image that could not be resolved): nothing to keep.
            return "nothing to keep: the task recorded no blobs"
        return None

    def _rewarm(self, task: Task, seen: BlobSeen) -> bool:
        """Re-create one missing blob on its target; False when it could not be."""
        progress = _recorded(task, seen.label, seen.target)
        if progress is None or not progress.url:
            logger.warning("task %s: no recorded URL for %s on %s", task.task_id, seen.label, seen.target)
            return False
        blob = Blob(
            url=progress.url,
            digest=progress.digest,
            size=progress.size,
            targeting=task.targeting,
            manifest_url=progress.manifest_url,
        )
        try:
            state = self._rewarmer.rewarm(task, progress, blob)
        except (PreheatError, OSError) as exc:
            logger.warning(
                "task %s: could not re-warm %s on %s: %s", task.task_id, seen.label, seen.target, exc
            )
            return False
        return state is not BlobState.FAILED


def _recorded(task: Task, label: str, target: str) -> BlobProgress | None:
    for blob in task.blobs:
        if blob.label == label and blob.target == target:
            return blob
    return None


class LazyLifecycle:
    """A verifier and a rewarmer built on their first use, from factories."""

    def __init__(self, verifier: Callable[[], Verifier], rewarmer: Callable[[], Rewarmer]) -> None:
        self._verifier = verifier
        self._rewarmer = rewarmer

    @classmethod
    def of(
        cls, verifier: Callable[[], Verifier], rewarmer: Callable[[], Rewarmer]
    ) -> tuple[Verifier, Rewarmer]:
        lazy = cls(verifier, rewarmer)
        return lazy, lazy

    def verify(self, task: Task) -> Verification:
        return self._verifier().verify(task)

    def rewarm(self, task: Task, progress: BlobProgress, blob: Blob) -> BlobState:
        return self._rewarmer().rewarm(task, progress, blob)


class DriverRewarmer:
    """Re-warms through the supernode driver: its create, after its evict where the target needs
    that. A Dragonfly 1 supernode that lost a blob still has its preheat record, and answers a new
    create of the same URL 208 "already exists" with nothing downloaded: the driver's evict deletes
    the cached task and that record first. A Dragonfly 2 job warms again whatever it finds missing,
    so there the create alone does."""

    def __init__(self, driver: SupernodeDriver, evict_first: bool) -> None:
        self._driver = driver
        self._evict_first = evict_first

    def rewarm(self, task: Task, progress: BlobProgress, blob: Blob) -> BlobState:
        if self._evict_first:
            [outcome] = self._driver.evict([progress])
            if outcome != EVICTED:
                raise TransientFailure(f"could not clear the way to re-warm it: {outcome}")
        return self._driver.create(progress.target, blob).state
