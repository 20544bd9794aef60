"""The worker: drives a task through its steps, one SQS message at a time.

Steps and why each is safe to run twice (SQS delivers at least once; Lambdas die):

- ``start`` resolves every blob from the registry, sending each to its supernodes as soon as it is
  resolved, and watches the supernodes for a short window. Resolving has no effect, and a
  supernode derives its task id from the URL, answering a repeat with the same id (or "already
  exists"), so a redelivered ``start`` redoes the same work. A task that ends within
  ``PROGRESS_AFTER_SECONDS`` is written once, with its verdict; a longer watch records its progress
  then (or, if shorter, before it hands over), for callers to see, leaving the check sequence
  alone. The write that marks the task dispatched is conditional on it, and comes after the first
  ``check`` message was sent, so a task is never dispatched without a check on its way.
- ``check`` polls the supernodes for the blobs still pending. Messages carry a sequence number
  and a random token; only the one whose sequence and token are the task's ``check_seq`` and
  ``check_chain`` is acted on, and its write moves both on conditionally. A duplicate delivery,
  the spare message of a worker that died between sending and writing, or the message of a
  concurrent delivery that lost the write, carries a token the task does not hold and is dropped:
  there is one chain of checks, even when two deliveries of one step run at the same moment.

A step that fails for a reason worth retrying (a registry's 503, DynamoDB throttling) leaves its
error on the task and is retried by SQS after a backoff of seconds
(``preheat.retry.step_retry_delay``); a task ended by its deadline or by the dead-letter consumer
says what it was waiting for and that last error.
Every step keeps its whole work (resolution, sends, watch) within the time budget it is given, and
nothing a server answers escapes as anything but a failure with a message.

Each step watches for at most ``check_window_seconds`` (90 s by default; never past what the
invocation has left, nor past the task's deadline), looking every ``check_interval_seconds`` at
most in its first seconds and every ``watch_interval_seconds`` after them, so a blob is noticed
within about half a second whether it takes 3 seconds or 3 minutes. When the window closes the
check hands the watch on to the next check message at once; only a step that could not watch (a
window of 0, or an invocation nearly spent) re-queues with an SQS delay that doubles from
``poll_initial_delay_seconds`` up to ``poll_max_delay_seconds``.

Every end (SUCCESS or FAIL) is announced through the event publisher after its write; a step
whose announcement fails is retried by redelivery, which finds the task ended and announces it
again: at least once.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime

from preheat.adapters.storage_signatures import redact_url
from preheat.budget import StepBudget
from preheat.dispatch import MAX_PARALLEL_SUPERNODE_CALLS, Dispatch
from preheat.errors import PermanentFailure, PreheatError, ProgressTooLarge, TransientFailure
from preheat.models import (
    RETRYING_PREFIX,
    Blob,
    BlobProgress,
    BlobState,
    Credentials,
    ImageReference,
    ImageResolution,
    LayerCounts,
    Platform,
    PreheatType,
    Step,
    Targeting,
    Task,
    TaskStatus,
    WorkerMessage,
    utcnow,
)
from preheat.ports import (
    CredentialStore,
    EventPublisher,
    RegistryClient,
    ResolveOptions,
    SupernodeDriver,
    TaskQueue,
    TaskStore,
)
from preheat.settings import Settings
from preheat.task_ids import without_params

logger = logging.getLogger(__name__)

# An HTTP 401 in a supernode's error, not the digits of a port, an address or a task id.
_UNAUTHORIZED = re.compile(r"(?<![\w.:/-])401(?![\w.])")


FIRST_RELOOK_SECONDS = 0.05
# Between a blob's create and the first look at it. A supernode starts downloading when the create
# arrives, and its answer needs as long to travel back as the download's first byte needs to
# arrive: looked at that very instant, even a small blob is still pending, and the next look is a
# whole pause away. A few milliseconds later it is usually done.
FIRST_LOOK_SECONDS = 0.02
# How long the start step watches before it records the blobs' progress for callers to see: most
# tasks of small images end sooner, and are then written once, with their verdict.
PROGRESS_AFTER_SECONDS = 0.5
# A watch looks every check_interval_seconds for this long, then every watch_interval_seconds.
QUICK_WATCH_SECONDS = 5.0
# A step whose watch was shorter than this hands over with a delay, as without watching.
MIN_WATCH_SECONDS = 1.0
# How a check that arrived before its sender recorded it waits for that write: 2 s at most.
HANDOVER_PAUSE_SECONDS = 0.05
HANDOVER_LOOKS = 40
# During a long watch, the layer counts callers see are recorded at most this often (when changed).
PROGRESS_EVERY_SECONDS = 5.0


def _pending(blobs: Sequence[BlobProgress]) -> bool:
    return any(blob.state is BlobState.PENDING for blob in blobs)


def _count_pending(blobs: Sequence[BlobProgress]) -> int:
    return sum(blob.state is BlobState.PENDING for blob in blobs)


class Worker:
    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        registry: RegistryClient,
        supernodes: SupernodeDriver,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        credentials: CredentialStore | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        self._credentials = credentials
        self._events = events
        self._store = store
        self._queue = queue
        self._registry = registry
        self._supernodes = supernodes
        self._settings = settings
        self._clock = clock
        self._sleep = sleep

    def handle(self, message: WorkerMessage, time_budget_seconds: float | None = None) -> Task | None:
        """Run one step. Returns the task as this step left it (None if there is nothing to do).

        ``time_budget_seconds`` bounds the step's whole work: resolution, sends and watch (what is
        left of the invocation, less room for the final writes). Raises TransientFailure when the
        step should be retried by redelivery.
        """
        task = self._store.get(message.task_id)
        if task is None:
            logger.warning("task %s no longer exists; dropping its %s message", message.task_id, message.step)
            return None
        if task.status.terminal:
            # A message outliving its task's end is a redelivery, maybe of the very step whose
            # completion event could not be put: announce again (consumers dedupe on the task id).
            self._announce(task)
            return task
        if task.is_expired(self._clock()):
            return self._finish(task, TaskStatus.FAIL, task.timed_out_message(), task.blobs)
        try:
            return self._step(task, message, StepBudget(time_budget_seconds))
        except ProgressTooLarge as exc:
            # No retry could record it: the task ends now, its counts kept, its detail dropped.
            current = self._store.get(task.task_id) or task
            return (
                current
                if current.status.terminal
                else self._finish(current, TaskStatus.FAIL, str(exc), exc.blobs)
            )

    def _step(self, task: Task, message: WorkerMessage, budget: StepBudget) -> Task:
        if message.step is Step.START:
            # The task stores a signed file URL redacted; the start message carries it whole.
            return self._start(task, message.headers, budget, message.url or task.url)
        return self._check(task, message, budget)

    def _window(self, budget: StepBudget) -> float:
        """How long a watch may last: the configured window, or what the step has left."""
        left = budget.left()
        window = self._settings.check_window_seconds
        return window if left is None else min(window, left)

    # -- start: resolve, dispatch, watch ----------------------------------------------------

    def _start(self, task: Task, headers: Credentials, budget: StepBudget, url: str) -> Task:
        if task.dispatched:
            return task  # a repeat delivery: the first one already set the check chain going
        if not self._supernodes.targets:
            # Nothing could be warmed: a vacuous SUCCESS would be a lie.
            return self._finish(task, TaskStatus.FAIL, "no supernodes configured: set PREHEAT_SUPERNODES", ())
        targets, scope = self._supernodes.targets, self._settings.supernode_scope
        batch = self._supernodes.batch_size
        # Where the request wants its blobs to land travels with each blob to the driver.
        aimed = functools.partial(_aimed, task.targeting)
        with Dispatch(
            self._send,
            self._send_batch,
            self._progress_of,
            targets,
            scope,
            batch,
            earlier=task.blobs,
            look=functools.partial(self._look, targeting=task.targeting),
        ) as dispatch:

            def submit(blob: Blob) -> None:
                dispatch.submit(aimed(blob))

            try:
                # The URL to fetch: the task's own holds its signature redacted.
                resolution = self._resolve(replace(task, url=url), headers, submit, budget.left())
                # Sends still unanswered when the step's time is up fail it, for a clean retry.
                progress = dispatch.progress([aimed(blob) for blob in resolution.blobs], budget.left())
            except PermanentFailure as exc:
                return self._finish(task, TaskStatus.FAIL, str(exc), task.blobs)
            except TransientFailure as exc:
                # Leave a note for the caller, the deadline and the dead-letter consumer, then retry
                # after a backoff. A target's rate limit lands here too: it is waited out, never a
                # failed blob. What was created is recorded, so that the retry does not create it again.
                retrying = replace(task, blobs=dispatch.created(), message=f"{RETRYING_PREFIX}{exc}")
                self._store.save(retrying, expected_check_seq=task.check_seq)
                exc.deadline = task.deadline
                raise
            except PreheatError:
                raise  # a DependencyFailure: the step is retried
            except Exception as exc:
                # Whatever a server answered must not crash the step into a redelivery loop.
                logger.exception("resolving task %s failed unexpectedly", task.task_id)
                what = "image" if task.type is PreheatType.IMAGE else "file"
                return self._finish(
                    task,
                    TaskStatus.FAIL,
                    f"could not resolve the {what} {task.url}: its server's answer could not be read "
                    f"({type(exc).__name__})",
                    task.blobs,
                )
        task = replace(
            task,
            blobs=progress,
            message=None,
            resolved_platforms=resolution.platforms,
            skipped_attestations=resolution.skipped_attestations,
        )
        if not _pending(progress):
            return self._conclude(task)
        # Every pending blob was looked at right after its create: the watch starts with a pause.
        return self._watch_then_requeue(task, self._window(budget), dispatching=True, looked=True)

    def _resolve(
        self, task: Task, headers: Credentials, on_blob: Callable[[Blob], None], budget: float | None
    ) -> ImageResolution:
        """The task's blobs, within ``budget`` seconds (what the invocation has left): a registry
        that stops answering fails the step in time for a clean retry, not the whole invocation."""
        if task.type is PreheatType.IMAGE:
            image = ImageReference.parse(task.url)
            platforms = [Platform.parse(platform) for platform in task.platforms]
            authenticated = self._authenticated(image, headers)  # stored: see preheat.handover
            options = ResolveOptions(budget, on_blob, stored_credentials=authenticated is not headers)
            return self._registry.resolve_image(image, authenticated, platforms, options)
        return ImageResolution(blobs=[self._registry.resolve_file(task.url, headers, ResolveOptions(budget))])

    def _authenticated(self, image: ImageReference, headers: Credentials) -> Credentials:
        """The request's headers, plus stored credentials for the registry when it brought none
        (the request's own Authorization always wins)."""
        if self._credentials is None or headers.get_ci("Authorization") is not None:
            return headers
        stored = self._credentials.for_registry(image.registry)
        if stored is None:
            return headers
        return Credentials({**headers.reveal(), **stored.reveal()})

    def _send(self, blob: Blob, target: str) -> BlobProgress:
        """Create ``blob`` on ``target``, and look at it shortly after if it is not done yet (a small
        blob often is by then). A TransientFailure of the create is raised (see Dispatch)."""
        progress = self._progress_of(blob, target)
        try:
            answer = self._supernodes.create(target, blob)
        except PermanentFailure as exc:
            return progress.with_state(BlobState.FAILED, str(exc))
        progress = replace(progress, supernode_task_id=answer.task_id, state=answer.state, error=answer.error)
        if progress.state is BlobState.PENDING:
            self._sleep(FIRST_LOOK_SECONDS)
        return self._look(progress, blob.targeting)

    def _send_batch(self, blobs: Sequence[Blob], target: str) -> list[BlobProgress]:
        """Create ``blobs`` on ``target`` at once (one Dragonfly 2 job with ``urls``), then look.
        A failure of the create is raised (see Dispatch)."""
        progress = [self._progress_of(blob, target) for blob in blobs]
        answers = self._supernodes.create_batch(target, blobs)
        progress = [
            replace(item, supernode_task_id=answer.task_id, state=answer.state, error=answer.error)
            for item, answer in zip(progress, answers, strict=True)
        ]
        if _pending(progress):
            self._sleep(FIRST_LOOK_SECONDS)
        return list(self._poll(tuple(progress), blobs[0].targeting if blobs else Targeting()))

    def _progress_of(self, blob: Blob, target: str) -> BlobProgress:
        """The blob as the task records it: with the URL handed over (its signature parameters
        left out) and the task id a node computes for it, for operators to check."""
        return BlobProgress(
            label=blob.label,
            target=target,
            digest=blob.digest,
            size=blob.size,
            url=redact_url(without_params(blob.url, blob.filter)),
            node_task_id=self._supernodes.node_task_id(blob),
            manifest_url=blob.manifest_url,
        )

    # -- check: poll what is pending ----------------------------------------------------------

    def _check(self, task: Task, message: WorkerMessage, budget: StepBudget) -> Task:
        if message.seq == task.check_seq + 1:
            task = self._await_handover(task, message.seq)
        if not is_current(task, message):
            logger.info(
                "dropping stale check %s of task %s (at %s)", message.seq, task.task_id, task.check_seq
            )
            return task
        return self._watch_then_requeue(task, self._window(budget), dispatching=False)

    def _await_handover(self, task: Task, seq: int) -> Task:
        """The task once the step that sent check ``seq`` has recorded it. A watch hands over with
        no delay, and its next check may arrive before the write that follows the send (see the
        module notes): that check waits a moment for it rather than being dropped as stale. A
        sender that died in between never writes; its own message, redelivered, sends again."""
        for _ in range(HANDOVER_LOOKS):
            self._sleep(HANDOVER_PAUSE_SECONDS)
            current = self._store.get(task.task_id)
            if current is None:
                return task
            task = current
            if task.check_seq >= seq or task.status.terminal:
                break
        return task

    def _watch_then_requeue(
        self, task: Task, window: float, *, dispatching: bool, looked: bool = False
    ) -> Task:
        """Poll until nothing is pending or the window closes; then conclude, or hand over to the
        next check message. ``looked``: the blobs' states are fresh, so the first poll waits."""
        started = self._clock()
        # Looks come quickly while blobs keep finishing (the last of a hundred is then noticed
        # soon after it is done), and back off to the configured interval while none does.
        quick = min(FIRST_RELOOK_SECONDS, self._settings.check_interval_seconds)
        pause = quick
        turn = task.check_seq  # a bounded round goes on from where the previous step's stopped
        blobs = task.blobs if looked else self._poll(task.blobs, task.targeting, turn)
        # A start step's progress is not recorded yet (see the module notes).
        unrecorded = dispatching
        # The watch ends at the deadline at the latest, so that end is noticed at once too.
        window = min(window, max(0.0, (task.deadline - started).total_seconds()))
        progress = _Progress(task, started)
        while _pending(blobs) and (self._clock() - started).total_seconds() + pause < window:
            if (unrecorded and (self._clock() - started).total_seconds() >= PROGRESS_AFTER_SECONDS) or (
                not unrecorded and progress.due(blobs, self._clock())
            ):
                # Callers see the layer counts from here on; the check sequence is left alone.
                if not self._store.save(replace(task, blobs=blobs), expected_check_seq=task.check_seq):
                    return task
                unrecorded = False
                progress.recorded(blobs, self._clock())
            self._sleep(pause)
            pending = _count_pending(blobs)
            turn += 1
            blobs = self._poll(blobs, task.targeting, turn)
            finishing = _count_pending(blobs) < pending
            pause = quick if finishing else min(pause * 2, self._longest_pause(started))
        blobs = self._watch_to_deadline(task, blobs, window)
        task = replace(task, blobs=blobs)
        if not _pending(blobs):
            return self._conclude(task)
        if self._clock() >= task.deadline:
            return self._finish(task, TaskStatus.FAIL, task.timed_out_message(), blobs)
        # A task handed over to checks has its progress on record before the first check is sent,
        # however short its watch was.
        if unrecorded and not self._store.save(task, expected_check_seq=task.check_seq):
            return task
        next_seq = task.check_seq + 1
        # A token of its own: should another delivery of this step send a check too, only the one
        # whose write wins names the task's chain, and the other's is dropped when it arrives.
        chain = secrets.token_hex(8)
        self._queue.send(
            WorkerMessage(task.task_id, Step.CHECK, seq=next_seq, chain=chain),
            # A watch is handed on at once: a delay would be a blind spot. (A step that could not
            # watch, its invocation nearly spent, backs off instead of spinning the chain.)
            delay_seconds=0 if window >= MIN_WATCH_SECONDS else self._delay_for(task, next_seq),
        )
        saved = replace(task, check_seq=next_seq, dispatched=True, check_chain=chain)
        if not self._store.save(saved, expected_check_seq=task.check_seq):
            what = "dispatched" if dispatching else f"checked at {task.check_seq}"
            logger.info("task %s was %s by another delivery", task.task_id, what)
            return task
        return saved

    def _longest_pause(self, started: datetime) -> float:
        """Between looks: ``check_interval_seconds`` while the watch is young (most blobs that
        finish at all finish then), ``watch_interval_seconds`` once it has lasted
        ``QUICK_WATCH_SECONDS``, which keeps a minutes-long watch cheap for the supernodes."""
        if (self._clock() - started).total_seconds() < QUICK_WATCH_SECONDS:
            return self._settings.check_interval_seconds
        return max(self._settings.check_interval_seconds, self._settings.watch_interval_seconds)

    def _watch_to_deadline(
        self, task: Task, blobs: tuple[BlobProgress, ...], window: float
    ) -> tuple[BlobProgress, ...]:
        """When the deadline falls within the last pause of a watch, wait for it and look once
        more: the task then ends FAIL "timed out" at its deadline, not a hand-over later."""
        left = (task.deadline - self._clock()).total_seconds()
        if not _pending(blobs) or window <= 0 or left <= 0 or left > self._settings.watch_interval_seconds:
            return blobs
        self._sleep(left)
        return self._poll(blobs, task.targeting)

    def _look(self, blob: BlobProgress, targeting: Targeting) -> BlobProgress:
        """The blob as its supernode now reports it (unchanged if it is not pending), with the
        peers holding it when the target says."""
        if blob.state is not BlobState.PENDING or blob.supernode_task_id is None:
            return blob
        try:
            answer = self._supernodes.look(blob, targeting)
        except TransientFailure as exc:
            # One missed look is not a verdict; the deadline bounds how long we keep trying, and a
            # task it ends names this as its last error.
            logger.warning("could not poll %s on %s: %s", blob.label, blob.target, exc)
            return blob.with_state(BlobState.PENDING, f"could not poll: {exc}")
        except PermanentFailure as exc:
            return blob.with_state(BlobState.FAILED, str(exc))
        except Exception as exc:
            # A driver bug on a hostile answer must not crash the step into a redelivery loop.
            logger.exception("polling %s on %s failed unexpectedly", blob.label, blob.target)
            return blob.with_state(
                BlobState.FAILED,
                f"the answer of {blob.target} about {blob.label} could not be read ({type(exc).__name__})",
            )
        return blob.looked(answer.state, answer.error, answer.peers)

    def _poll(
        self, blobs: tuple[BlobProgress, ...], targeting: Targeting, turn: int = 0
    ) -> tuple[BlobProgress, ...]:
        """One look round: every pending blob, or as many as the target bounds a round to
        (``looks_per_round``), taken in turn so that each is still looked at every few rounds."""
        pending = [index for index, blob in enumerate(blobs) if blob.state is BlobState.PENDING]
        bound = self._supernodes.looks_per_round
        if bound is not None and len(pending) > bound:
            start = (turn * bound) % len(pending)
            pending = [pending[(start + offset) % len(pending)] for offset in range(bound)]
        if not pending:
            return blobs
        chosen = [blobs[index] for index in pending]
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SUPERNODE_CALLS, len(pending))) as pool:
            answers = pool.map(self._look, chosen, [targeting] * len(chosen))
            looked = dict(zip(pending, answers, strict=True))
        return tuple(looked.get(index, blob) for index, blob in enumerate(blobs))

    def _delay_for(self, task: Task, seq: int) -> int:
        delay = min(
            self._settings.poll_initial_delay_seconds * (1 << max(0, seq - 1)),
            self._settings.poll_max_delay_seconds,
        )
        # Never sleep far past the deadline: the next look is the one that declares the timeout.
        until_deadline = int((task.deadline - self._clock()).total_seconds()) + 1
        return max(0, min(delay, until_deadline))

    # -- the end ----------------------------------------------------------------------------

    def _conclude(self, task: Task) -> Task:
        failed = [blob for blob in task.blobs if blob.state is BlobState.FAILED]
        if not failed:
            return self._finish(task, TaskStatus.SUCCESS, None, task.blobs)
        counts = LayerCounts.of(task.blobs)
        reasons = "; ".join(
            f"{blob.label} on {blob.target}: {blob.error or 'failed'}" for blob in failed[:10]
        )
        more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
        noun = "layer" if task.type is PreheatType.IMAGE else "file"
        message = f"{counts.failed} of {counts.total} {noun}(s) failed to preheat: {reasons}{more}"
        if (
            task.type is PreheatType.IMAGE
            and self._settings.layer_urls == "registry"
            and any(_UNAUTHORIZED.search(blob.error or "") for blob in failed)
        ):
            # The supernode downloads with the credentials handed over; a Bearer token lives minutes.
            message += (
                " (HTTP 401: the registry credentials handed over with the blob URLs were refused or "
                "had expired before the download started, or none were (stored ones go only as a token "
                "for the one repository: see PREHEAT_STORED_CREDENTIALS_HANDOVER); preheat again)"
            )
        return self._finish(task, TaskStatus.FAIL, message, task.blobs)

    def _finish(
        self, task: Task, status: TaskStatus, message: str | None, blobs: tuple[BlobProgress, ...]
    ) -> Task:
        finished = replace(
            task,
            status=status,
            message=message,
            blobs=blobs,
            finished_at=self._clock(),
            check_seq=task.check_seq + 1,
        )
        if not self._store.save(finished, expected_check_seq=task.check_seq):
            logger.info("task %s was concluded by another delivery", task.task_id)
            return task
        logger.info("task %s finished %s", task.task_id, status.value)
        self._announce(finished)
        return finished

    def _announce(self, task: Task) -> None:
        """Put the task's completion event. A failure (DependencyFailure) fails the step, so SQS
        delivers its message again, and the terminal task found then is announced again."""
        if self._events is not None:
            self._events.task_finished(task)


class _Progress:
    """When a long watch records its progress: when the layer counts changed, at most every
    ``PROGRESS_EVERY_SECONDS``, so a 100-layer image warming for minutes costs a write per 5 s at
    most, not one per blob."""

    def __init__(self, task: Task, now: datetime) -> None:
        self._counts = LayerCounts.of(task.blobs)  # what the task read holds: on record
        self._at = now

    def due(self, blobs: tuple[BlobProgress, ...], now: datetime) -> bool:
        return (now - self._at).total_seconds() >= PROGRESS_EVERY_SECONDS and LayerCounts.of(
            blobs
        ) != self._counts

    def recorded(self, blobs: tuple[BlobProgress, ...], now: datetime) -> None:
        self._counts = LayerCounts.of(blobs)
        self._at = now


def _aimed(targeting: Targeting, blob: Blob) -> Blob:
    return replace(blob, targeting=targeting) if targeting else blob


def is_current(task: Task, message: WorkerMessage) -> bool:
    """Whether ``message`` is the step ``task`` waits for: its start before it is dispatched, then
    the check whose sequence and token the task holds (a task from before tokens holds none)."""
    if message.step is Step.START:
        return not task.dispatched
    if not task.dispatched or message.seq != task.check_seq:
        return False
    return not task.check_chain or message.chain == task.check_chain


def give_up(
    store: TaskStore,
    message: WorkerMessage,
    receive_count: int,
    clock: Callable[[], datetime] = utcnow,
    events: EventPublisher | None = None,
) -> Task | None:
    """End the task of a message that exhausted its receives as FAIL, saying what it was waiting
    for and the last error it met, and announce it; unless the message is stale (the task moved on
    to another step, driven by another message), which leaves the task alone.

    Retries once on a conflicting write, since a late worker may have moved the task meanwhile. A
    task found already ended is announced too: its message may have died of the announcement.
    """
    for _ in range(2):
        task = store.get(message.task_id)
        if task is None:
            return task
        if task.status.terminal:
            if events is not None:
                events.task_finished(task)
            return task
        if not is_current(task, message):
            logger.info(
                "dead %s message %s of task %s is stale (the task is at check %s): left alone",
                message.step.value,
                message.seq,
                task.task_id,
                task.check_seq,
            )
            return task
        reason = (
            f"the worker gave up on its '{message.step.value}' step after {receive_count} attempts, "
            f"{task.waiting_for()}"
        )
        last = task.last_error()
        if last:
            reason += f"; last error: {last}"
        failed = replace(
            task, status=TaskStatus.FAIL, message=reason, finished_at=clock(), check_seq=task.check_seq + 1
        )
        if store.save(failed, expected_check_seq=task.check_seq):
            if events is not None:
                events.task_finished(failed)
            return failed
    return store.get(message.task_id)
