"""The API's answer shapes: a task, its blobs and its layer counts as the status answer gives them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from preheat.models.common import BlobState, isoformat

if TYPE_CHECKING:
    from preheat.models.task import BlobProgress, Task


@dataclass(frozen=True)
class LayerCounts:
    total: int
    succeeded: int
    failed: int
    pending: int

    @classmethod
    def of(cls, blobs: tuple[BlobProgress, ...]) -> LayerCounts:
        """A layer counts as succeeded only when it is warm on every supernode it was sent to."""
        by_label: dict[str, list[BlobState]] = {}
        for blob in blobs:
            by_label.setdefault(blob.label, []).append(blob.state)
        succeeded = sum(all(s is BlobState.SUCCESS for s in states) for states in by_label.values())
        failed = sum(any(s is BlobState.FAILED for s in states) for states in by_label.values())
        total = len(by_label)
        return cls(total, succeeded, failed, total - succeeded - failed)


def task_answer(task: Task, detail: bool = False) -> dict[str, Any]:
    """The status answer's ``data``: the spec's ``taskId`` and ``status``, then extras
    (``detail`` lists every blob on every supernode)."""
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "status": task.status.value,
        "type": task.type.value,
        "url": task.url,
        "startTime": isoformat(task.created_at),
        "finishTime": isoformat(task.finished_at),
    }
    if task.platforms:
        data["platform"] = list(task.platforms)
    if task.resolved_platforms:
        data["platforms"] = list(task.resolved_platforms)
    if task.skipped_attestations:
        data["skippedAttestations"] = task.skipped_attestations
    data.update(task.targeting.to_api())
    counts = LayerCounts.of(task.blobs) if task.blobs else task.layer_counts
    if counts is not None:
        data["layers"] = {
            "total": counts.total,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "pending": counts.pending,
        }
    if task.message:
        data["msg"] = task.message
    if task.keep_warm is not None:
        data["keepWarm"] = task.keep_warm.to_api()
    if task.evicted_at is not None:
        data["evictedAt"] = isoformat(task.evicted_at)
        if detail:
            data["evictions"] = [
                {"blob": e.label, "supernode": without_userinfo(e.target), "outcome": e.outcome}
                for e in task.evictions
            ]
    if detail:
        data["blobs"] = [blob_answer(blob) for blob in task.blobs]
    return data


def blob_answer(blob: BlobProgress) -> dict[str, Any]:
    """A blob on one supernode in the status answer (``detail=true``)."""
    data: dict[str, Any] = {"digest": blob.digest} if blob.digest else {"url": blob.label}
    if blob.size is not None:
        data["size"] = blob.size
    data["supernode"] = without_userinfo(blob.target)
    if blob.url:
        data["preheatedUrl"] = blob.url
    if blob.node_task_id:
        data["nodeTaskId"] = blob.node_task_id
    data["state"] = blob.state.value
    if blob.error:
        data["error"] = blob.error
    if blob.peers or blob.peer_count:
        # The peers a Dragonfly 2 scheduler says hold the blob (at most MAX_STORED_PEERS once stored).
        data["peers"] = [{"hostname": p.hostname, "ip": p.ip, "finished": p.finished} for p in blob.peers]
        data["peerCount"] = max(blob.peer_count, len(blob.peers))
        data["finishedPeers"] = max(blob.finished_peer_count, sum(p.finished for p in blob.peers))
    return data


def without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
