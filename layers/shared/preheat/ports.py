"""Ports: what the domain needs from the outside world. Each has one production adapter in
``preheat.adapters`` and a fake in the tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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
    TaskQuery,
    WorkerMessage,
)
from preheat.models.keepwarm import KeepWarm


@dataclass(frozen=True)
class TaskPage:
    """One page of a listing, newest first; ``after`` is where the next page starts (None: no more)."""

    tasks: tuple[Task, ...]
    after: str | None


@dataclass(frozen=True)
class OverdueQuery:
    """The tasks still RUNNING at ``now`` with their deadline at most ``now``, among those created
    from ``created_from`` to before ``created_before``: a window of creation times, since a task's
    deadline is its creation plus the task timeout, so a sweep reads the tasks whose deadline could
    have passed since the sweeps before it, never the whole table. ``examine`` bounds the items one
    call reads (each shard's share of them)."""

    now: datetime
    created_from: datetime
    created_before: datetime
    examine: int = 5000


@dataclass(frozen=True)
class Overdue:
    """The ids an :class:`OverdueQuery` found, oldest first; ``complete`` is False when the read
    stopped at ``examine`` items before the window's end (the next sweep reads it again)."""

    task_ids: tuple[str, ...]
    complete: bool = True


class TaskStore(Protocol):
    def create(self, task: Task, claim: str | None = None, replaces: str | None = None) -> None:
        """Write a new task, atomically with a claim on ``claim`` (the request's dedup key) if
        given: the claim must be free, or still held by task ``replaces``. Raises ClaimHeld (naming
        the holder) when it is not, DependencyFailure if the store is unreachable."""

    def get(self, task_id: str) -> Task | None: ...

    def save(self, task: Task, expected_check_seq: int) -> bool:
        """Replace the task's mutable state if its ``check_seq`` is still ``expected_check_seq``
        and it is not terminal yet. Returns False when another delivery got there first."""

    def list_tasks(self, query: TaskQuery, *, now: datetime) -> TaskPage:
        """Up to ``query.limit`` tasks, newest first, that ``query`` matches at ``now`` (see
        TaskQuery). A page may hold fewer than ``limit`` tasks and still have an ``after``: the store
        bounds the work one call does."""

    def overdue(self, query: OverdueQuery) -> Overdue:
        """The ids of the tasks ``query`` asks for, read through an index (see OverdueQuery); the
        caller reads each task whole before ending it, since the index holds a summary."""

    def put_alias(self, alias: str, task: Task) -> bool:
        """Record ``alias`` (a key with a ``<kind>#`` prefix, e.g. ``job#123``) as another name of
        ``task``, kept as long as the task. True when it now names ``task`` (written, or already
        there); False when it names another task."""

    def get_alias(self, alias: str) -> str | None:
        """The id of the task ``alias`` names, or None."""

    def record_eviction(self, task: Task) -> bool:
        """Write ``task.evicted_at`` and ``task.evictions`` on a task that has no eviction yet
        (whatever its status: a finished task is evicted too). False when one is already there."""


class TaskQueue(Protocol):
    def send(self, message: WorkerMessage, delay_seconds: int = 0) -> None: ...

    def retry_later(self, receipt_handle: str, delay_seconds: float) -> None:
        """Make a received message visible again ``delay_seconds`` from now (rounded up to whole
        seconds), instead of after the queue's visibility timeout. DependencyFailure if refused."""


@dataclass(frozen=True)
class ResolveOptions:
    """How a resolution runs, apart from what it resolves.

    Past ``time_budget_seconds`` (None: unbounded) no request is started and none is waited for: the
    resolution raises TransientFailure. ``on_blob`` is called with each blob of an image as soon as
    its URL is known, from the client's threads, so that the caller can start on it while the
    others resolve; a resolution that fails may have called it for some blobs. (A file has one
    blob: it is the answer, and ``on_blob`` is not called.)"""

    time_budget_seconds: float | None = None
    on_blob: Callable[[Blob], None] | None = None
    # The Authorization in the headers is the service's stored credential, not the caller's: the
    # blobs carry only what preheat.handover lets the peers have of it.
    stored_credentials: bool = False

    def found(self, blob: Blob) -> None:
        """Hand ``blob`` to ``on_blob``, if there is one."""
        if self.on_blob is not None:
            self.on_blob(blob)


# No time budget, no blob handed over before the answer.
UNBOUNDED = ResolveOptions()


class RegistryClient(Protocol):
    def resolve_image(
        self,
        image: ImageReference,
        headers: Credentials,
        platforms: Sequence[Platform] = (),
        options: ResolveOptions = UNBOUNDED,
    ) -> ImageResolution:
        """Every blob of the image (config included), each with its real download URL, once each,
        within ``options`` (see ResolveOptions).

        An index or manifest list is narrowed to ``platforms`` when given (PermanentFailure naming
        the platforms it has when one is missing), else every platform image except attestations.

        Raises PermanentFailure (missing image, refused credentials, unsupported manifest) or
        TransientFailure (timeouts, 5xx after retries)."""

    def resolve_file(self, url: str, headers: Credentials, options: ResolveOptions = UNBOUNDED) -> Blob:
        """The file's real download URL after redirects (within ``options.time_budget_seconds``)."""


@dataclass(frozen=True)
class SupernodeTask:
    """A supernode's answer about one preheat task."""

    task_id: str
    state: BlobState
    error: str | None = None
    # The peers holding the blob, when the target can say (Dragonfly 2 schedulers).
    peers: tuple[PeerCopy, ...] = ()


@dataclass(frozen=True)
class PeerSeen:
    """A peer a verify found holding a blob: ``finished`` None when its target did not answer
    (unknown, never "gone"). A Dragonfly 1 supernode is its own peer."""

    host: str
    ip: str
    finished: bool | None


@dataclass(frozen=True)
class Holding:
    """What a target says now about one recorded blob (``SupernodeDriver.holders``).

    ``warm`` is whether the peers the task's scope asks for hold it finished (None: unknown).
    ``pending`` means the target is still working out the answer (a Dragonfly 2 manager's job):
    ask again. ``unreachable`` names the target that did not answer (its peers' ``finished`` is
    then None)."""

    peers: tuple[PeerSeen, ...] = ()
    warm: bool | None = None
    pending: bool = False
    unreachable: str | None = None
    error: str | None = None


# What ``SupernodeDriver.evict`` answers for a blob it removed (else a reason it did not).
EVICTED = "evicted"


class SupernodeDriver(Protocol):
    @property
    def targets(self) -> tuple[str, ...]:
        """The supernodes (base URLs) every blob is sent to."""

    def ping(self) -> Mapping[str, str | None]:
        """Each target mapped to None when it answers, else to why it did not."""

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        """Ask ``target`` to preheat ``blob``; an "already exists" answer counts as warm."""

    @property
    def batch_size(self) -> int:
        """How many blobs one :meth:`create_batch` may carry (1: create them one by one)."""

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        """Ask ``target`` to preheat ``blobs`` at once (at most ``batch_size``); one answer per blob."""

    def node_task_id(self, blob: Blob) -> str:
        """The task id a node of this target computes for ``blob``'s URL, in the target's algorithm."""

    def look(self, blob: BlobProgress, targeting: Targeting) -> SupernodeTask:
        """How ``blob`` (pending on ``blob.target``) stands now, for a task aimed by ``targeting``.

        The whole recorded blob and the task's targeting, not a bare task id: a Dragonfly 2
        scheduler is asked by URL (or by manifest) and judges warmth by the peers the targeting
        names. Encoding those in the supernode task id instead would copy the URL and targeting
        into every stored blob, and the drivers that need a task id read it from
        ``blob.supernode_task_id``."""

    @property
    def looks_per_round(self) -> int | None:
        """How many of a task's pending blobs one look may ask about (None: all of them). The
        worker takes them in turn, so a large task's looks stay within the target's bound."""

    def holders(self, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
        """Ask each blob's target now (not the recorded progress) which peers hold it; one answer
        per blob, in order. A target that does not answer gives ``Holding.unreachable``, never an
        empty "gone" answer. Raises only for a target kind that cannot say (NotSupported)."""

    def evict(self, blobs: Sequence[BlobProgress]) -> list[str]:
        """Remove each blob from its target so that a later preheat downloads it again; one
        outcome per blob: ``EVICTED``, or why not (unreachable, refused). NotSupported when this
        kind of target offers no way to delete (the message names what would), even for no blobs:
        ``evict(())`` is how a caller asks before it changes anything."""


class CredentialStore(Protocol):
    def for_registry(self, registry: str) -> Credentials | None:
        """Headers that authenticate to ``registry`` (``host`` or ``host:port``) when the request
        brought none: ECR tokens, or credentials an operator stored for that host."""


class EventPublisher(Protocol):
    def task_finished(self, task: Task) -> None:
        """Announce that ``task`` ended (SUCCESS or FAIL). At least once: a caller that cannot tell
        whether an earlier announcement went out announces again; consumers dedupe on the task id.
        Raises DependencyFailure when the event could not be put."""

    def task_evicted(self, task: Task) -> None:
        """Announce that ``task``'s blobs were taken out of the cluster ("Preheat Task Evicted").
        Raises DependencyFailure when the event could not be put."""


class KeepWarmStore(Protocol):
    """The keep-warm schedule of the tasks kept warm (see preheat.keepwarm)."""

    def due(self, now: datetime, limit: int) -> tuple[str, ...]:
        """The ids of kept tasks whose next check is at or before ``now`` (at most ``limit``), read
        through an index, never the table."""

    def claim(self, task_id: str, expected: datetime, following: datetime) -> bool:
        """Move the task's next check from ``expected`` to ``following``; False when another sweep
        moved it first (and runs the check)."""

    def record(self, task_id: str, kept: KeepWarm) -> bool:
        """Record the last check and the next one (none: the task is no longer kept)."""


class RewarmPublisher(Protocol):
    def task_rewarmed(self, task: Task, missing: Sequence[str], failed: Sequence[str] = ()) -> None:
        """Announce that a keep-warm check found ``missing`` (``<blob>@<target>``) and re-created
        them (``failed``: those it could not). Raises DependencyFailure when refused."""
