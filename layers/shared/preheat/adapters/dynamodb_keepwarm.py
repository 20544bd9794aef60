"""The task item's keep-warm schedule and Step Functions task token, in the tasks table.

Kept apart from ``dynamodb.py`` (the task store), which only writes these attributes when it
creates a task and reads them back with it:

- ``kwEvery`` (seconds), ``kwUntil``, ``kwLast`` (the last check, JSON) and ``kwStopped`` record the
  schedule; ``kwShard``/``kwNext`` are ``KeepWarmIndex``'s keys, present only while the task is kept,
  so the index is sparse: the sweeper reads the due tasks from it (``kwNext <= now`` under each
  of its few shards), never the table.
- ``callbackToken`` holds a Step Functions task token until the task's end answers it, then is
  removed. Neither index projects it, so it is in no listing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.models import Task, isoformat, parse_isoformat
from preheat.models.keepwarm import KeepWarm, KeepWarmCheck, TaskToken
from preheat.settings import Settings

KEEP_WARM_INDEX = "KeepWarmIndex"
# Due checks spread over a few partitions, so that thousands of kept tasks due at the same minute
# do not pile onto one; a sweep queries each.
KEEP_WARM_SHARDS = 4
KEEP_WARM_SHARD_PREFIX = "keepwarm#"
TOKEN_ATTRIBUTE = "callbackToken"  # noqa: S105 (an attribute name, not a secret)


def keep_warm_shard(task_id: str) -> str:
    number = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % KEEP_WARM_SHARDS
    return f"{KEEP_WARM_SHARD_PREFIX}{number}"


def lifecycle_attributes(task: Task) -> dict[str, Any]:
    """What a new task's item holds of its keep-warm schedule and task token."""
    item: dict[str, Any] = {}
    kept = task.keep_warm
    if kept is not None:
        item["kwEvery"] = {"N": str(int(kept.every.total_seconds()))}
        item["kwUntil"] = {"S": isoformat(kept.until)}
        if kept.next_check_at is not None:
            item["kwShard"] = {"S": keep_warm_shard(task.task_id)}
            item["kwNext"] = {"S": isoformat(kept.next_check_at)}
    if task.callback_token is not None:
        item[TOKEN_ATTRIBUTE] = {"S": task.callback_token.value}
    return item


def keep_warm_from_item(item: dict[str, Any]) -> KeepWarm | None:
    if "kwEvery" not in item:
        return None
    until = parse_isoformat(item["kwUntil"]["S"])
    assert until is not None
    last = item.get("kwLast", {}).get("S")
    return KeepWarm(
        every=timedelta(seconds=int(item["kwEvery"]["N"])),
        until=until,
        next_check_at=parse_isoformat(item.get("kwNext", {}).get("S")),
        last_check=KeepWarmCheck.from_store(json.loads(last)) if last else None,
        stopped=item.get("kwStopped", {}).get("S"),
    )


def token_from_item(item: dict[str, Any]) -> TaskToken | None:
    value = item.get(TOKEN_ATTRIBUTE, {}).get("S")
    return TaskToken(value) if value else None


class DynamoDBKeepWarmStore:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._settings = settings
        self._table = settings.table_name
        self._injected_client = client

    @functools.cached_property
    def _client(self) -> Any:
        return self._injected_client or aws.client("dynamodb")

    def due(self, now: datetime, limit: int) -> tuple[str, ...]:
        """The ids of kept tasks whose next check is at or before ``now``, earliest first within
        each shard, at most ``limit`` in all (the rest are read by the next sweep)."""
        found: list[tuple[str, str]] = []
        for number in range(KEEP_WARM_SHARDS):
            try:
                answer = self._client.query(
                    TableName=self._table,
                    IndexName=KEEP_WARM_INDEX,
                    KeyConditionExpression="kwShard = :shard AND kwNext <= :now",
                    ExpressionAttributeValues={
                        ":shard": {"S": f"{KEEP_WARM_SHARD_PREFIX}{number}"},
                        ":now": {"S": isoformat(now)},
                    },
                    Limit=limit,
                )
            except (ClientError, BotoCoreError) as exc:
                raise DependencyFailure(
                    f"could not read the due keep-warm checks: {aws.reason(exc)}"
                ) from None
            found += [(item["kwNext"]["S"], item["pk"]["S"]) for item in answer.get("Items", [])]
        return tuple(task_id for _, task_id in sorted(found)[:limit])

    def claim(self, task_id: str, expected: datetime, following: datetime) -> bool:
        """Move the task's next check from ``expected`` to ``following`` before checking it: of two
        sweeps that found the same due check, one moves it and runs it, the other is refused."""
        return self._update(
            task_id,
            "SET kwNext = :following",
            {":following": {"S": isoformat(following)}, ":expected": {"S": isoformat(expected)}},
            "kwNext = :expected",
        )

    def record(self, task_id: str, kept: KeepWarm) -> bool:
        """Write what the last check found and when the next one is (or that none is: the task
        leaves the index). The item lives until ``until`` plus the task retention."""
        values: dict[str, Any] = {
            ":expires": {
                "N": str(int((kept.until + timedelta(days=self._settings.task_ttl_days)).timestamp()))
            }
        }
        sets = ["expiresAt = :expires"]
        if kept.last_check is not None:
            values[":last"] = {"S": json.dumps(kept.last_check.to_store(), separators=(",", ":"))}
            sets.append("kwLast = :last")
        if kept.next_check_at is not None:
            values[":next"] = {"S": isoformat(kept.next_check_at)}
            sets.append("kwNext = :next")
            expression = "SET " + ", ".join(sets) + " REMOVE kwStopped"
        else:
            values[":stopped"] = {"S": kept.stopped or "stopped"}
            sets.append("kwStopped = :stopped")
            expression = "SET " + ", ".join(sets) + " REMOVE kwShard, kwNext"
        return self._update(task_id, expression, values, "attribute_exists(kwEvery)")

    def forget_token(self, task_id: str) -> None:
        """Remove the task's Step Functions token once it was answered (or refused for good)."""
        self._update(task_id, f"REMOVE {TOKEN_ATTRIBUTE}", None, "attribute_exists(pk)")

    def _update(self, task_id: str, expression: str, values: dict[str, Any] | None, condition: str) -> bool:
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": task_id}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
        }
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._client.update_item(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise DependencyFailure(f"could not update the task: {aws.reason(exc)}") from None
        except BotoCoreError as exc:
            raise DependencyFailure(f"could not update the task: {aws.reason(exc)}") from None
        return True
