"""One start step's dispatch: each blob sent to its supernodes as soon as the registry client has
resolved it (or in batches, to a target that takes many at once), a send's failures turned into
failed blobs, a breaker for a supernode whose creates keep failing, and the results in order.

A start step that is retried (a manager's job rate limit waited out, the step's time run out) must
not create again what its earlier try created: a Dragonfly 2 manager makes a new job of every
create, so a 1000-blob image in one-job-per-URL mode would get some 960 duplicate jobs per retry.
So the dispatch keeps what it created (``created``, which the worker records on the task when the
step fails), and is given what earlier tries recorded (``earlier``): a blob already created on a
target is looked at under its recorded id instead of being created again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Self, TypeVar

from preheat.errors import PermanentFailure, RateLimited, TransientFailure
from preheat.models import (
    Blob,
    BlobProgress,
    BlobState,
)
from preheat.placement import targets_for
from preheat.task_ids import without_params

# Its failures are the worker's, and logged as such.
logger = logging.getLogger("preheat.worker")

_T = TypeVar("_T")

# Supernode calls in flight at once per step: a round of creates or looks for a 100-layer image
# costs two round trips, not seven.
MAX_PARALLEL_SUPERNODE_CALLS = 64
# Creates on one supernode that failed for a reason worth retrying, one after another, before the
# step stops sending it the rest: a supernode that accepts connections and never answers costs the
# step one round of timeouts, not one per blob.
BREAKER_FAILURES = 3


class Dispatch:
    """The blobs of one start step, each sent to its supernodes as soon as the registry client has
    resolved it, while it resolves the others: a blob's create and first look overlap the other
    blobs' registry round trips instead of waiting for the slowest of them.

    ``submit`` is called from the registry client's threads; ``progress`` sends whatever was not
    submitted yet (a client that resolves in one go), waits for every send, and lists the results
    in the resolution's order. Leaving the ``with`` block waits for sends still in flight (a failed
    resolution's), which are harmless: a supernode joins a repeated create.
    """

    def __init__(
        self,
        send: Callable[[Blob, str], BlobProgress],
        send_batch: Callable[[Sequence[Blob], str], list[BlobProgress]],
        describe: Callable[[Blob, str], BlobProgress],
        targets: tuple[str, ...],
        scope: str,
        batch_size: int = 1,
        *,
        earlier: Iterable[BlobProgress] = (),
        look: Callable[[BlobProgress], BlobProgress] = lambda blob: blob,
    ) -> None:
        self._send = send
        self._describe = describe
        self._look = look
        # Blobs an earlier try of this step created, by (blob, target): looked at, not created again.
        self._earlier = {recorded_key(item): item for item in earlier if item.supernode_task_id}
        self._created: list[BlobProgress] = []
        self._send_batch = send_batch
        self._targets = targets
        self._scope = scope
        self._batch_size = batch_size
        self._pool = ThreadPoolExecutor(MAX_PARALLEL_SUPERNODE_CALLS, thread_name_prefix="dispatch")
        self._sent: dict[str, list[Future[BlobProgress]]] = {}
        self._lock = threading.Lock()
        # Per target: transient create failures in a row, and the last one's message.
        self._failures: dict[str, tuple[int, str]] = {}
        self._abandoned = False

    def _guarded(self, blob: Blob, target: str) -> BlobProgress:
        """``send``, turning its failures into a FAILED blob; a target whose creates keep failing
        for reasons worth retrying gets no more of this step's creates (see BREAKER_FAILURES)."""
        # The blob as recorded is described only for a failure here: ``send`` describes its own.
        resumed = self._resume(blob, target)
        if resumed is not None:
            return resumed
        with self._lock:
            failures, last = self._failures.get(target, (0, ""))
        if failures >= BREAKER_FAILURES:
            return self._describe(blob, target).with_state(
                BlobState.FAILED,
                f"not sent: this supernode failed the {failures} preheats before it ({last})",
            )
        try:
            sent = self._send(blob, target)
        except RateLimited:
            raise  # waited out by retrying the step, never a failed blob
        except TransientFailure as exc:
            with self._lock:
                count = self._failures.get(target, (0, ""))[0] + 1
                self._failures[target] = (count, str(exc))
            return self._describe(blob, target).with_state(BlobState.FAILED, str(exc))
        except Exception as exc:
            logger.exception("sending %s to %s failed unexpectedly", blob.label, target)
            return self._describe(blob, target).with_state(
                BlobState.FAILED,
                f"the answer of {target} to the preheat of {blob.label} could not be "
                f"read ({type(exc).__name__})",
            )
        with self._lock:
            self._failures.pop(target, None)
        self._record([sent])
        return sent

    def _guarded_batch(self, blobs: Sequence[Blob], target: str) -> list[BlobProgress]:
        """``send_batch``, turning a failure of the batch's create into every blob of it FAILED
        (a rate limit is raised: it is waited out by retrying the step, never a failed blob)."""
        try:
            return self._send_batch(blobs, target)
        except RateLimited:
            raise
        except (PermanentFailure, TransientFailure) as exc:
            return [self._describe(blob, target).with_state(BlobState.FAILED, str(exc)) for blob in blobs]

    def _resume(self, blob: Blob, target: str) -> BlobProgress | None:
        """The blob under the id an earlier try of the step created it with, looked at; None if
        no earlier try created it on ``target``."""
        earlier = self._earlier.get(_sent_key(blob, target))
        if earlier is None:
            return None
        described = self._describe(blob, target)
        return self._look(
            replace(
                described,
                supernode_task_id=earlier.supernode_task_id,
                state=earlier.state,
                error=earlier.error,
            )
        )

    def _record(self, sent: Iterable[BlobProgress]) -> None:
        with self._lock:
            self._created.extend(item for item in sent if item.supernode_task_id)

    def created(self) -> tuple[BlobProgress, ...]:
        """What this step created so far and what earlier tries had, one per (blob, target): what
        the task records when the step fails, for the retry to find."""
        with self._lock:
            merged = dict(self._earlier)
            merged.update((recorded_key(item), item) for item in self._created)
        return tuple(merged.values())

    def _send_new(self, blobs: Sequence[Blob], target: str) -> list[BlobProgress]:
        """``send_batch`` for the blobs no earlier try created on ``target``; the others resumed."""
        resumed = {_key(blob): self._resume(blob, target) for blob in blobs}
        fresh = [blob for blob in blobs if resumed[_key(blob)] is None]
        sent = iter(self._guarded_batch(fresh, target) if fresh else [])
        answered = [resumed[_key(blob)] or next(sent) for blob in blobs]
        self._record(answered)
        return answered

    def submit(self, blob: Blob) -> None:
        if self._batch_size > 1:
            return  # a target that takes many blobs at once gets them all in ``progress``
        with self._lock:
            if _key(blob) in self._sent:
                return
            self._sent[_key(blob)] = [
                self._pool.submit(self._guarded, blob, target)
                for target in targets_for(blob, self._targets, self._scope)
            ]

    def progress(self, blobs: Sequence[Blob], time_left: float | None = None) -> tuple[BlobProgress, ...]:
        """Every blob's result, waiting at most ``time_left`` seconds in all: sends still unanswered
        then raise TransientFailure (and are abandoned, not waited for)."""
        if self._batch_size > 1:
            return self._batches(blobs, time_left)
        for blob in blobs:
            self.submit(blob)
        with self._lock:
            sent = [self._sent[_key(blob)] for blob in blobs]
        futures = [future for group in sent for future in group]
        return tuple(self._results(futures, time_left))

    def _results(self, futures: Sequence[Future[_T]], time_left: float | None) -> list[_T]:
        _, unanswered = wait(futures, timeout=time_left)
        if unanswered:
            self._abandoned = True
            with self._lock:
                failing = {target: last for target, (_, last) in self._failures.items()}
            detail = f"; last error: {next(iter(failing.values()))}" if failing else ""
            raise TransientFailure(
                f"{len(unanswered)} of {len(futures)} preheat requests to the supernodes were still "
                f"unanswered when the step's time ran out{detail}"
            )
        return [future.result() for future in futures]

    def _batches(self, blobs: Sequence[Blob], time_left: float | None) -> tuple[BlobProgress, ...]:
        """Every blob in as few creates as the target allows: per target, chunks of ``batch_size``."""
        unique = list({_key(blob): blob for blob in blobs}.values())
        by_target: dict[str, list[Blob]] = {}
        for blob in unique:
            for target in targets_for(blob, self._targets, self._scope):
                by_target.setdefault(target, []).append(blob)
        size = self._batch_size
        futures = [
            self._pool.submit(self._send_new, assigned[start : start + size], target)
            for target, assigned in by_target.items()
            for start in range(0, len(assigned), size)
        ]
        answered = self._results(futures, time_left)
        done = {(item.label, item.target): item for items in answered for item in items}
        return tuple(
            done[(blob.label, target)]
            for blob in unique
            for target in targets_for(blob, self._targets, self._scope)
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        # Abandoned sends finish on their own (each is bounded by the driver's timeouts): the step
        # must end within its time, and a supernode joins the repeat a retry makes.
        self._pool.shutdown(wait=not self._abandoned, cancel_futures=self._abandoned)


def _key(blob: Blob) -> str:
    return blob.digest or blob.url


def _sent_key(blob: Blob, target: str) -> tuple[str, str]:
    # As the task records it: BlobProgress.url is the URL without its signature parameters.
    return (blob.digest or without_params(blob.url, blob.filter), target)


def recorded_key(item: BlobProgress) -> tuple[str, str]:
    return (item.digest or item.url or item.label, item.target)
