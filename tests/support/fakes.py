"""Fakes of the ports: they keep what they are given, so tests assert on state, not on calls."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from preheat.errors import ClaimHeld, DependencyFailure, PermanentFailure, TransientFailure
from preheat.models import (
    Blob,
    BlobProgress,
    BlobState,
    Credentials,
    ImageReference,
    ImageResolution,
    PeerCopy,
    Platform,
    Targeting,
    Task,
    TaskStatus,
    WorkerMessage,
)
from preheat.ports import EVICTED, UNBOUNDED, Holding, PeerSeen, ResolveOptions, SupernodeTask


class FakeTaskStore:
    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.claims: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.fail_next: int = 0
        self.writes = 0
        self._lock = threading.Lock()

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyFailure("store down")

    def create(self, task: Task, claim: str | None = None, replaces: str | None = None) -> None:
        self._maybe_fail()
        with self._lock:
            assert task.task_id not in self.tasks
            if claim is not None:
                holder = self.claims.get(claim)
                if holder is not None and holder != replaces:
                    raise ClaimHeld(holder)
                self.claims[claim] = task.task_id
            self.tasks[task.task_id] = task
            self.writes += 1

    def get(self, task_id: str) -> Task | None:
        self._maybe_fail()
        return self.tasks.get(task_id)

    def save(self, task: Task, expected_check_seq: int) -> bool:
        self._maybe_fail()
        with self._lock:
            current = self.tasks[task.task_id]
            if current.check_seq != expected_check_seq or current.status is not TaskStatus.RUNNING:
                return False
            self.tasks[task.task_id] = task
            self.writes += 1
            return True

    def put_alias(self, alias: str, task: Task) -> bool:
        self._maybe_fail()
        with self._lock:
            holder = self.aliases.setdefault(alias, task.task_id)
            self.writes += 1
            return holder == task.task_id

    def get_alias(self, alias: str) -> str | None:
        self._maybe_fail()
        return self.aliases.get(alias)

    def record_eviction(self, task: Task) -> bool:
        self._maybe_fail()
        with self._lock:
            current = self.tasks.get(task.task_id)
            if current is None or current.evicted_at is not None:
                return False
            self.tasks[task.task_id] = replace(current, evicted_at=task.evicted_at, evictions=task.evictions)
            self.writes += 1
            return True


@dataclass
class SentMessage:
    message: WorkerMessage
    delay_seconds: int


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[SentMessage] = []
        self.retries: list[tuple[str, float]] = []
        self.fail_next = 0

    def send(self, message: WorkerMessage, delay_seconds: int = 0) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyFailure("queue down")
        self.sent.append(SentMessage(message, delay_seconds))

    def retry_later(self, receipt_handle: str, delay_seconds: float) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyFailure("queue down")
        self.retries.append((receipt_handle, delay_seconds))

    def take(self) -> list[WorkerMessage]:
        messages, self.sent = [s.message for s in self.sent], []
        return messages


@dataclass
class FakeRegistry:
    images: dict[str, list[Blob]] = field(default_factory=dict)
    files: dict[str, Blob] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)
    seen_headers: list[Credentials] = field(default_factory=list)

    seen_platforms: list[tuple[Platform, ...]] = field(default_factory=list)
    seen_budgets: list[float | None] = field(default_factory=list)

    def resolve_image(
        self,
        image: ImageReference,
        headers: Credentials,
        platforms: Sequence[Platform] = (),
        options: ResolveOptions = UNBOUNDED,
    ) -> ImageResolution:
        self.seen_budgets.append(options.time_budget_seconds)
        self.seen_headers.append(headers)
        self.seen_platforms.append(tuple(platforms))
        if self.errors:
            raise self.errors.pop(0)
        try:
            blobs = self.images[str(image)]
        except KeyError:
            raise PermanentFailure(f"manifest for {image} not found") from None
        # Half the blobs are handed over as they resolve, the rest only in the result: the worker
        # must dispatch both kinds (a client may resolve in one go).
        for blob in blobs[: len(blobs) // 2]:
            options.found(blob)
        return ImageResolution(blobs, tuple(str(p) for p in platforms))

    def resolve_file(self, url: str, headers: Credentials, options: ResolveOptions = UNBOUNDED) -> Blob:
        self.seen_budgets.append(options.time_budget_seconds)
        self.seen_headers.append(headers)
        if self.errors:
            raise self.errors.pop(0)
        return self.files.get(url, Blob(url=url))


class FakeSupernodes:
    """Supernodes whose blobs finish when the test says so (``finish``), or fail."""

    def __init__(self, targets: tuple[str, ...] = ("http://sn1:8002",)) -> None:
        self._targets = targets
        self.states: dict[tuple[str, str], SupernodeTask] = {}
        self.creates: list[tuple[str, Blob]] = []
        self.down: set[str] = set()
        self.warm: set[str] = set()  # labels already cached: create answers SUCCESS
        self.polls = 0
        self.finish_after_polls: int | None = None  # each blob turns SUCCESS on its n-th poll
        self._polls_of: dict[tuple[str, str], int] = {}
        self.looks_per_round: int | None = None
        # Per look: the task id asked about and the targeting the look carried.
        self.looked: list[tuple[str, Targeting]] = []
        self.verifies = 0
        self.evicted: list[tuple[str, str]] = []  # (target, label) per evict

    @property
    def targets(self) -> tuple[str, ...]:
        return self._targets

    def ping(self) -> Mapping[str, str | None]:
        return {t: ("connection refused" if t in self.down else None) for t in self._targets}

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        if target in self.down:
            raise TransientFailure(f"supernode {target} unreachable")
        self.creates.append((target, blob))
        task_id = f"id-{blob.label}"
        state = BlobState.SUCCESS if blob.label in self.warm else BlobState.PENDING
        return self.states.setdefault((target, task_id), SupernodeTask(task_id, state))

    batch_size = 1

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        return [self.create(target, blob) for blob in blobs]

    def node_task_id(self, blob: Blob) -> str:
        return hashlib.sha256(f"node {blob.url}".encode()).hexdigest()

    def look(self, blob: BlobProgress, targeting: Targeting) -> SupernodeTask:
        self.looked.append((blob.supernode_task_id or "", targeting))
        return self.status(blob.target, blob.supernode_task_id or "")

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        self.polls += 1
        if target in self.down:
            raise TransientFailure(f"supernode {target} unreachable")
        key = (target, supernode_task_id)
        self._polls_of[key] = self._polls_of.get(key, 0) + 1
        if self.finish_after_polls is not None and self._polls_of[key] >= self.finish_after_polls:
            self.states[key] = replace(self.states[key], state=BlobState.SUCCESS)
        return self.states[key]

    def holders(self, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
        """The supernode is the peer (as Dragonfly 1's): warm when its task is SUCCESS and not evicted."""
        self.verifies += 1
        answers = []
        for blob in blobs:
            host = blob.target.split("//", 1)[-1]
            if blob.target in self.down:
                answers.append(
                    Holding(peers=(PeerSeen(host, host, None),), unreachable=blob.target, error="unreachable")
                )
                continue
            answer = self.states.get((blob.target, blob.supernode_task_id or ""))
            if answer is None or answer.state is BlobState.FAILED:
                answers.append(Holding(warm=False))
            else:
                finished = answer.state is BlobState.SUCCESS
                answers.append(Holding(peers=(PeerSeen(host, host, finished),), warm=finished))
        return answers

    def evict(self, blobs: Sequence[BlobProgress]) -> list[str]:
        outcomes = []
        for blob in blobs:
            if blob.target in self.down:
                outcomes.append(f"supernode {blob.target} unreachable")
                continue
            self.states.pop((blob.target, blob.supernode_task_id or ""), None)
            self.evicted.append((blob.target, blob.label))
            outcomes.append(EVICTED)
        return outcomes

    def finish(
        self,
        label: str | None = None,
        state: BlobState = BlobState.SUCCESS,
        error: str | None = None,
        peers: tuple[PeerCopy, ...] = (),
    ) -> None:
        for key, answer in self.states.items():
            if label is None or key[1] == f"id-{label}":
                self.states[key] = replace(answer, state=state, error=error, peers=peers)


class Clock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeEvents:
    """An event publisher keeping the finished tasks it was told of; ``fail_next`` refuses puts."""

    def __init__(self) -> None:
        self.finished: list[Task] = []
        self.evicted: list[Task] = []
        self.fail_next = 0

    def task_finished(self, task: Task) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyFailure("events down")
        self.finished.append(task)

    def task_evicted(self, task: Task) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyFailure("events down")
        self.evicted.append(task)
