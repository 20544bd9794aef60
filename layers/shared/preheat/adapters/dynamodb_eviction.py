"""How the task item records an eviction (``evictedAt``, ``evictions``): a module of its own so
that the store's main module stays within its size.

The per-blob outcomes travel as compressed JSON rows ``[label, target, outcome]``, like the blob
progress, bounded so that the item stays under DynamoDB's 400 KB limit beside that progress
(``dynamodb_progress.MAX_BLOBS_BYTES``): outcomes are cut shorter, then rows dropped from the end, while
they do not fit (the event and the answer say how many there were).
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.models import BlobEviction, Task, isoformat, parse_isoformat

MAX_EVICTIONS_BYTES = 64 * 1024
OUTCOME_CUTS = (300, 80, 20)


def _encode(evictions: tuple[BlobEviction, ...], chars: int) -> bytes:
    rows = [[e.label, e.target, e.outcome[:chars]] for e in evictions]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), level=6)


def evictions_binary(evictions: tuple[BlobEviction, ...]) -> bytes:
    for chars in OUTCOME_CUTS:
        data = _encode(evictions, chars)
        if len(data) <= MAX_EVICTIONS_BYTES:
            return data
    kept = evictions
    while kept:
        kept = kept[: len(kept) // 2]
        data = _encode(kept, OUTCOME_CUTS[-1])
        if len(data) <= MAX_EVICTIONS_BYTES:
            return data
    return _encode((), 0)


def eviction_update(task: Task) -> dict[str, Any]:
    """The UpdateItem arguments (less table and key) that record ``task``'s eviction once: the
    condition refuses a second one, so a repeated DELETE changes nothing."""
    assert task.evicted_at is not None
    return {
        "UpdateExpression": "SET evictedAt = :at, evictions = :evictions",
        "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(evictedAt)",
        "ExpressionAttributeValues": {
            ":at": {"S": isoformat(task.evicted_at)},
            ":evictions": {"B": evictions_binary(task.evictions)},
        },
    }


def eviction_from_item(item: dict[str, Any]) -> tuple[datetime | None, tuple[BlobEviction, ...]]:
    evicted_at = parse_isoformat(item.get("evictedAt", {}).get("S"))
    data = item.get("evictions", {}).get("B")
    if evicted_at is None or not data:
        return evicted_at, ()
    rows = json.loads(zlib.decompress(bytes(data)))
    return evicted_at, tuple(BlobEviction(str(a), str(b), str(c)) for a, b, c in rows)


def record_eviction(client: Any, table: str, task: Task) -> bool:
    """``TaskStore.record_eviction`` on DynamoDB: False when the task already records one."""
    try:
        client.update_item(TableName=table, Key={"pk": {"S": task.task_id}}, **eviction_update(task))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise DependencyFailure(f"could not record the eviction: {aws.reason(exc)}") from None
    except BotoCoreError as exc:
        raise DependencyFailure(f"could not record the eviction: {aws.reason(exc)}") from None
    return True
