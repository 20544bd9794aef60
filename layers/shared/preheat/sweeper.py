"""The sweeper: ends the tasks whose check chain died, at their deadline, and announces them.

A task's chain of check messages can die without a trace: a Lambda killed between the send it
never made and the write it never did, a message deleted by hand, a queue purged. Such a task stays
RUNNING in the table. A status read shows it FAIL "timed out" past its deadline (and writes that
down), but nobody may ever read it, so without the sweeper it would never be announced.

Every few minutes (the template's ``SweeperSchedule``) the sweeper reads, through the listing index,
the tasks created in the window whose deadlines could have passed since the sweeps before it
(``LOOKBACK`` wide, for sweeps that failed or were late), keeps those still RUNNING past their
deadline, and ends each one as a status read does: FAIL with the task's timed-out message, in the
same write conditional on the task's check sequence, so a worker or a reader that concludes at the
same moment keeps its verdict (and announces it itself).

The completion event is put at least once. The sweeper puts it after its write; should PutEvents
fail, it hands the announcement to the worker by queueing a check message for the task: a worker
that finds a task ended announces it (again, if need be), retried by SQS and finally by the
dead-letter consumer. Should that send fail too, the sweep raises: the invocation is an error
(alarmed), and the task is FAIL on record without its event, the one case left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from preheat.errors import DependencyFailure
from preheat.models import Step, Task, WorkerMessage, utcnow
from preheat.ports import EventPublisher, OverdueQuery, TaskQueue, TaskStore
from preheat.settings import Settings

logger = logging.getLogger(__name__)

# How long after its deadline a task is still looked for: a dozen sweeps at the template's rate of
# one every 5 minutes, so a sweep or two that fail (Lambda retries them) or run late miss nothing.
LOOKBACK = timedelta(hours=1)
# The index items one sweep reads at most: its hour-wide window at 1.4 tasks a second. One that holds more
# is read again, from its oldest task, by the next sweep (``Overdue.complete``).
MAX_EXAMINED = 5000
# A task's deadline is its creation plus the timeout, stored in whole seconds (rounded down): the
# window reaches a second further so that a task created in that second is not left out.
DEADLINE_ROUNDING = timedelta(seconds=1)
# What became of one task a sweep found.
ENDED, HANDED, SKIPPED = "ended", "handed", "skipped"


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did: the tasks it ended, those found ended by someone else meanwhile, those
    whose event went to the worker instead, and whether it read its whole window."""

    ended: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    handed_to_worker: tuple[str, ...] = ()
    complete: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "ended": list(self.ended),
            "skipped": len(self.skipped),
            "handedToWorker": list(self.handed_to_worker),
            "complete": self.complete,
        }


class Sweeper:
    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        events: EventPublisher,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._queue = queue
        self._events = events
        self._settings = settings
        self._clock = clock

    def window(self, now: datetime) -> OverdueQuery:
        """The tasks whose deadline (creation plus the timeout) fell within ``LOOKBACK`` of ``now``."""
        timeout = timedelta(seconds=self._settings.task_timeout_seconds)
        return OverdueQuery(
            now=now,
            created_from=now - timeout - LOOKBACK,
            created_before=now - timeout + DEADLINE_ROUNDING,
            examine=MAX_EXAMINED,
        )

    def sweep(self) -> SweepResult:
        """End every task of the window still RUNNING past its deadline, and announce each.

        A task that cannot be ended now (the store failed) is left for the next sweep; the sweep
        goes on with the others and raises DependencyFailure at the end, so the invocation counts as
        failed and is retried."""
        now = self._clock()
        found = self._store.overdue(self.window(now))
        outcomes: dict[str, list[str]] = {ENDED: [], SKIPPED: [], HANDED: []}
        failures: list[str] = []
        for task_id in found.task_ids:
            try:
                outcomes[self._end(task_id, now)].append(task_id)
            except DependencyFailure as exc:
                logger.error("could not end overdue task %s: %s", task_id, exc)
                failures.append(f"{task_id}: {exc}")
        if not found.complete:
            logger.warning("the sweep read %s index items and stopped: the next one reads on", MAX_EXAMINED)
        if failures:
            raise DependencyFailure(
                f"{len(failures)} overdue task(s) could not be ended or announced: {'; '.join(failures[:5])}"
            )
        return SweepResult(
            tuple(outcomes[ENDED] + outcomes[HANDED]),
            tuple(outcomes[SKIPPED]),
            tuple(outcomes[HANDED]),
            found.complete,
        )

    def _end(self, task_id: str, now: datetime) -> str:
        """ENDED, HANDED (ended, its event left to the worker) or SKIPPED (not overdue any more)."""
        task = self._store.get(task_id)  # whole, and consistent: the index is a summary, and lags
        if task is None or not task.is_expired(now):
            return SKIPPED
        ended = task.timed_out()
        if not self._store.save(ended, expected_check_seq=task.check_seq):
            # A worker or a status read ended it meanwhile, and announces it.
            return SKIPPED
        logger.info("task %s ended FAIL at its deadline by the sweeper", task_id)
        try:
            self._events.task_finished(ended)
        except DependencyFailure as exc:
            self._hand_to_worker(ended, exc)
            return HANDED
        return ENDED

    def _hand_to_worker(self, task: Task, reason: DependencyFailure) -> None:
        """Queue a message for the ended task: the worker announces a task it finds ended (see
        Worker.handle), with SQS's redelivery behind it. Raises DependencyFailure if refused."""
        logger.warning("task %s: its event was not put (%s); the worker announces it", task.task_id, reason)
        self._queue.send(WorkerMessage(task.task_id, Step.CHECK, seq=task.check_seq))
