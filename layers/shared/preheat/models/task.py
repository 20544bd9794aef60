"""The domain task: what a task is, and the blobs it moves to the supernodes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from preheat.models.answers import LayerCounts, blob_answer, task_answer
from preheat.models.common import BlobState, Credentials, PreheatType, TaskStatus
from preheat.models.keepwarm import KeepWarm, TaskToken
from preheat.models.request import Targeting


@dataclass(frozen=True)
class Blob:
    """One thing a supernode must download: an image layer or config, or a plain file.

    ``headers`` are what the supernode must send to ``url`` (registry auth when the URL is the
    registry itself); they are credentials and never stored.
    """

    url: str
    digest: str | None = None
    size: int | None = None
    media_type: str | None = None
    headers: Credentials = field(default_factory=Credentials)
    filter: tuple[str, ...] = ()
    # Where the request wants it (set by the worker from its task; Dragonfly 2 only).
    targeting: Targeting = field(default_factory=Targeting)
    # The URL (by digest) of the platform manifest that lists this blob, when it came from one: a
    # Dragonfly 2 scheduler creates blob-digest task ids only through a preheat of that manifest.
    manifest_url: str | None = None

    @property
    def label(self) -> str:
        """How messages name this blob: its digest, else its URL without the query string."""
        return self.digest or self.url.split("?", 1)[0]


@dataclass(frozen=True)
class ImageResolution:
    """What the registry said an image is: its blobs, and which platform images they came from."""

    blobs: list[Blob]
    platforms: tuple[str, ...] = ()  # the platform images taken from an index (empty for one manifest)
    skipped_attestations: int = 0


@dataclass(frozen=True)
class PeerCopy:
    """A Dragonfly 2 peer holding a blob: which host, and whether its download has finished."""

    hostname: str
    ip: str
    finished: bool

    @property
    def name(self) -> str:
        """How messages name the peer: its hostname and IP."""
        return f"{self.hostname} ({self.ip})" if self.hostname else self.ip


@dataclass(frozen=True)
class BlobProgress:
    """A blob on one supernode, as the task records it."""

    label: str
    target: str
    state: BlobState = BlobState.PENDING
    digest: str | None = None
    size: int | None = None
    supernode_task_id: str | None = None
    error: str | None = None
    # The URL handed over (signature parameters left out) and the task id a node computes for it.
    url: str | None = None
    node_task_id: str | None = None
    # The peers a Dragonfly 2 scheduler said hold it (its other targets report none); once stored,
    # at most a few of them, and how many there were (finished or not) in the counts.
    peers: tuple[PeerCopy, ...] = ()
    peer_count: int = 0
    finished_peer_count: int = 0
    # The manifest it came from (blob-digest task ids are created and read per manifest).
    manifest_url: str | None = None

    def with_state(self, state: BlobState, error: str | None = None) -> BlobProgress:
        return replace(self, state=state, error=error)

    def looked(self, state: BlobState, error: str | None, peers: tuple[PeerCopy, ...]) -> BlobProgress:
        """The blob as a look found it: its state, and the peers holding it now."""
        finished = sum(peer.finished for peer in peers)
        return replace(
            self, state=state, error=error, peers=peers, peer_count=len(peers), finished_peer_count=finished
        )

    def to_api(self) -> dict[str, Any]:
        return blob_answer(self)


@dataclass(frozen=True)
class BlobEviction:
    """What an eviction did to one blob on one target: ``outcome`` is "evicted", or why not."""

    label: str
    target: str
    outcome: str


TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# How a step that will be retried marks the task's msg: the error it met, kept for the end.
RETRYING_PREFIX = "retrying after: "


def is_task_id(text: str) -> bool:
    return TASK_ID_RE.match(text) is not None


@dataclass(frozen=True)
class Task:
    """A preheat task. ``check_seq`` orders the worker's check messages (see worker.py)."""

    task_id: str
    type: PreheatType
    url: str
    status: TaskStatus
    created_at: datetime
    deadline: datetime
    finished_at: datetime | None = None
    message: str | None = None
    blobs: tuple[BlobProgress, ...] = ()
    dispatched: bool = False
    check_seq: int = 0
    # The token of the one check message the task waits for (see worker.py): a check that carries
    # another is a duplicate's, and is dropped.
    check_chain: str = ""
    platforms: tuple[str, ...] = ()  # requested; empty means every platform of an index
    resolved_platforms: tuple[str, ...] = ()
    skipped_attestations: int = 0
    targeting: Targeting = field(default_factory=Targeting)
    # The counts alone, when the blobs were not read (a listing reads a summary, not the progress).
    layer_counts: LayerCounts | None = None
    # Checked and re-warmed on a schedule when the request asked (see preheat.keepwarm).
    keep_warm: KeepWarm | None = None
    # Answered when the task ends, then forgotten (see preheat.callbacks); never in an answer.
    callback_token: TaskToken | None = None
    # When the task's blobs were taken out of the cluster (DELETE), and what happened to each.
    evicted_at: datetime | None = None
    evictions: tuple[BlobEviction, ...] = ()

    def is_expired(self, now: datetime) -> bool:
        return self.status is TaskStatus.RUNNING and now >= self.deadline

    def waiting_for(self) -> str:
        """What a RUNNING task is waiting for, as the end of a message."""
        pending = sorted({blob.label for blob in self.blobs if blob.state is BlobState.PENDING})
        retrying = bool(self.message and self.message.startswith(RETRYING_PREFIX))
        if not self.dispatched and (retrying or not pending):
            # A start step still resolving; what it had handed over when it failed (looked at last
            # then, pending or not) is recorded for its retry, and is not what the task waits for.
            source = "the registry" if self.type is PreheatType.IMAGE else "the file's server"
            sent = f" ({len(self.blobs)} already handed over)" if self.blobs else ""
            return f"waiting for {source} to resolve {self.url}{sent}"
        if not pending:
            return "waiting for its next step"
        shown = ", ".join(pending[:10]) + (f" and {len(pending) - 10} more" if len(pending) > 10 else "")
        return f"waiting for the supernodes; still pending: {shown}"

    def last_error(self) -> str | None:
        """The last error a RUNNING task met: its step's, or else a pending blob's failed look."""
        if self.message and self.message.startswith(RETRYING_PREFIX):
            return self.message.removeprefix(RETRYING_PREFIX)
        for blob in self.blobs:
            if blob.state is BlobState.PENDING and blob.error:
                return f"{blob.label} on {blob.target}: {blob.error}"
        return self.message or None

    def timed_out_message(self) -> str:
        """Why a task ended at its deadline: what it was waiting for, and the last error it met."""
        message = (
            f"timed out: still RUNNING at the deadline {self.deadline.isoformat()}, {self.waiting_for()}"
        )
        last = self.last_error()
        if last:
            message += f"; last error: {last}"
        return message

    def timed_out(self) -> Task:
        """The task ended at its deadline, as whoever notices it first writes it (a status read,
        the sweeper): FAIL with :meth:`timed_out_message`, its check sequence moved on, so that the
        write is conditional on nobody having moved the task meanwhile."""
        return replace(
            self,
            status=TaskStatus.FAIL,
            finished_at=self.deadline,
            message=self.timed_out_message(),
            check_seq=self.check_seq + 1,
        )

    def to_api(self, detail: bool = False) -> dict[str, Any]:
        """The status answer's ``data`` (see ``task_answer``)."""
        return task_answer(self, detail)


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks a listing asks for: up to ``limit``, newest first, created before position
    ``after`` (a page's ``after``), of ``status`` and ``type`` when given."""

    limit: int
    status: TaskStatus | None = None
    type: PreheatType | None = None
    after: str | None = None

    @property
    def filtered(self) -> bool:
        return self.status is not None or self.type is not None

    def matches(self, task: Task, now: datetime) -> bool:
        """Whether ``task`` is one the query asks for; a RUNNING task past its deadline counts as
        FAIL, as its status answer says."""
        shown = TaskStatus.FAIL if task.is_expired(now) else task.status
        return (self.status is None or shown is self.status) and (self.type is None or task.type is self.type)
