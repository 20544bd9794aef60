"""The task item's blob progress: compressed rows of each blob on each target, cut until the item
fits, and read back (kept apart from ``dynamodb.py``, the task store that writes and reads it)."""

from __future__ import annotations

import json
import zlib
from typing import Any

from preheat.errors import ProgressTooLarge
from preheat.models import BlobProgress, BlobState, LayerCounts, PeerCopy, Task

# The most the compressed blob progress may take of the item; the rest of it (url, msg, dates,
# platforms, attribute names) is bounded to a few KB. DynamoDB counts a binary by its bytes; moto, the
# local stack's stand-in, counts its base64 text (a third more) against the limit, and applies an
# update's SET actions one at a time, so an update it refuses leaves the item half-written (status
# FAIL without finishedAt). 280 KiB keeps the item under the limit as both count it.
MAX_BLOBS_BYTES = 280 * 1024
# The longest error stored per blob, then the shorter cuts tried while the progress does not fit.
ERROR_CUTS = (500, 160, 60)
# Stored for a digest equal to its blob's label (every layer's), which is then stored once.
_SAME_AS_LABEL = 1
# Stored for a node task id equal to the blob's supernode task id (a Dragonfly 1 supernode's, unless
# filter or identifier differ from the nodes'): 64 hex characters that do not compress, once not twice.
_SAME_AS_SUPERNODE_ID = 1
# The peers stored per blob (a scheduler's), then the fewer tried while the progress does not fit;
# how many there were, finished or not, is always kept.
PEER_CUTS = (16, 4, 0)


def cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}..."


def _encode(
    blobs: tuple[BlobProgress, ...], error_chars: int, finished_ids: bool, peers_kept: int = PEER_CUTS[0]
) -> bytes:
    rows = [
        [
            b.label,
            b.target,
            b.state.value,
            _SAME_AS_LABEL if b.digest == b.label else b.digest,  # a layer's label is its digest
            b.size,
            supernode_id,
            cut(b.error, error_chars),
            b.url,
            _SAME_AS_SUPERNODE_ID if supernode_id and b.node_task_id == supernode_id else b.node_task_id,
            *_peer_columns(b, peers_kept),
        ]
        for b in blobs
        for supernode_id in [b.supernode_task_id if finished_ids or b.state is BlobState.PENDING else None]
    ]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), level=6)


def _blobs_to_binary(blobs: tuple[BlobProgress, ...]) -> bytes | None:
    """The progress as stored, cut until it fits; None when even the shortest cut does not (the
    item would be refused, and every write of the task after it: see ``save``)."""
    for finished_ids in (True, False):
        for peers_kept in PEER_CUTS:
            for error_chars in ERROR_CUTS:
                data = _encode(blobs, error_chars, finished_ids, peers_kept)
                if len(data) <= MAX_BLOBS_BYTES:
                    return data
    return None


def _peer_columns(blob: BlobProgress, kept: int) -> list[Any]:
    """The manifest, the first ``kept`` peers as [hostname, ip, 0|1] and the peer counts; none
    for a blob with neither (every blob of the HTTP targets)."""
    count = max(blob.peer_count, len(blob.peers))
    if not count and blob.manifest_url is None:
        return []
    finished = max(blob.finished_peer_count, sum(peer.finished for peer in blob.peers))
    peers = [[peer.hostname, peer.ip, int(peer.finished)] for peer in blob.peers[:kept]]
    return [blob.manifest_url, peers, count, finished]


def set_progress(task: Task, values: dict[str, Any], sets: list[str], removes: list[str]) -> None:
    """The update's actions for the task's blob progress and the layer counts the listing shows."""
    data = _blobs_to_binary(task.blobs)
    if data is not None:
        values[":blobs"] = {"B": data}
        sets.append("blobs = :blobs")
    elif not task.status.terminal:
        raise ProgressTooLarge(
            f"the progress of {len(task.blobs)} blob copies (blobs x supernodes) is too large to "
            "record in the task's item; preheat on fewer supernodes at once "
            "(PREHEAT_SUPERNODE_SCOPE=one) or fewer platforms",
            task.blobs,
        )
    else:
        # The task must end all the same: recorded with its counts and message, without the
        # per-blob detail (an item DynamoDB refused would leave it RUNNING for good).
        removes.append("blobs")
    # A summary the listing index carries instead of the (large) blobs.
    counts = LayerCounts.of(task.blobs)
    values[":counts"] = {
        "L": [{"N": str(n)} for n in (counts.total, counts.succeeded, counts.failed, counts.pending)]
    }
    sets.append("layerCounts = :counts")


def blobs_from_binary(data: bytes | None) -> tuple[BlobProgress, ...]:
    if not data:
        return ()
    rows = json.loads(zlib.decompress(data))
    return tuple(
        BlobProgress(
            label=label,
            target=target,
            state=BlobState(state),
            digest=label if digest == _SAME_AS_LABEL else digest,
            size=size,
            supernode_task_id=row[5],
            error=row[6],
            # Rows written before the URL and node task id were recorded have seven columns.
            url=row[7] if len(row) > 7 else None,
            node_task_id=_node_task_id(row),
            # Rows of blobs no scheduler reported on end there.
            manifest_url=row[9] if len(row) > 9 else None,
            peers=tuple(PeerCopy(hostname, ip, bool(done)) for hostname, ip, done in row[10])
            if len(row) > 10
            else (),
            peer_count=row[11] if len(row) > 11 else 0,
            finished_peer_count=row[12] if len(row) > 12 else 0,
        )
        for row in rows
        for label, target, state, digest, size in [row[:5]]
    )


def _node_task_id(row: list[Any]) -> str | None:
    if len(row) <= 8:
        return None
    node_task_id: str | None = row[5] if row[8] == _SAME_AS_SUPERNODE_ID else row[8]
    return node_task_id
