"""Task store on DynamoDB: one item per task, written with conditions so racing deliveries cannot
both win.

Blob progress travels inside the task item as compressed JSON so that a task costs the same few
requests whether its image has 1 layer or 1000. What is stored per blob is bounded so that the item
stays under DynamoDB's 400 KB limit at the service's own limits (1024 blobs on 3 supernodes, each
with a long error of its own): errors are cut, and cut shorter while the progress would not fit
(the task's ``msg`` keeps the first ten in full); past that, finished blobs lose their supernode
task ids, which only pending blobs need.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.adapters.dynamodb_attributes import _claim_refused, _layer_counts, _strings, _targeting
from preheat.adapters.dynamodb_eviction import eviction_from_item, record_eviction
from preheat.adapters.dynamodb_keepwarm import keep_warm_from_item, lifecycle_attributes, token_from_item
from preheat.adapters.dynamodb_progress import blobs_from_binary, cut, set_progress
from preheat.errors import ClaimHeld, DependencyFailure
from preheat.models import (
    PreheatType,
    Task,
    TaskQuery,
    TaskStatus,
    isoformat,
    parse_isoformat,
)
from preheat.ports import Overdue, OverdueQuery, TaskPage
from preheat.settings import Settings

# Claims share the table with tasks; task ids are UUIDs, so the prefix cannot collide.
CLAIM_PREFIX = "claim#"

# The listing index (template.yaml's TasksTable ListIndex). Its partition key is one of LIST_SHARDS
# values, chosen by a hash of the task id, and its sort key is the creation time then the task id.
# Creation times only grow, so one partition key would take every write at its end (splitting a key
# for heat cannot help an ever-growing sort key): sharding spreads a burst over LIST_SHARDS keys, and
# a reader merges the shards, each already in order. Changing LIST_SHARDS hides the tasks of the
# shards it drops until they expire.
LIST_INDEX = "ListIndex"
LIST_SHARDS = 8
LIST_SHARD_PREFIX = "tasks#"
# The same positions keyed by status (``statusShard``: ``RUNNING#3``, same shard as ``listShard``),
# so that ``?status=`` reads only tasks of that status instead of filtering the whole index after
# reading it (which answered pages of nothing that still carried a ``next``). A task's key moves
# with its status, in the write that changes it.
STATUS_INDEX = "StatusIndex"
# Items one listing call looks at once its page holds a task: a page is cut short then, with a
# cursor, rather than read on. A page is never answered empty with a cursor: with nothing found
# yet the read goes on to the end of the index (the status index and the server-side filters leave
# only tasks read past their deadline to skip, see ``list_tasks``).
MAX_EXAMINED = 1000


# The longest ``msg`` stored (the conclusion lists ten failures).
MAX_MESSAGE_CHARS = 8000


class DynamoDBTaskStore:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._settings = settings
        self._table = settings.table_name
        self._injected_client = client

    @functools.cached_property
    def _client(self) -> Any:
        # Built on first use, so a function that never touches the table never pays for the client.
        return self._injected_client or aws.client("dynamodb")

    def _expires_at(self, moment: datetime) -> int:
        return int((moment + timedelta(days=self._settings.task_ttl_days)).timestamp())

    def create(self, task: Task, claim: str | None = None, replaces: str | None = None) -> None:
        item: dict[str, Any] = {
            "pk": {"S": task.task_id},
            "type": {"S": task.type.value},
            "url": {"S": task.url},
            "status": {"S": task.status.value},
            "createdAt": {"S": isoformat(task.created_at)},
            "deadline": {"N": str(int(task.deadline.timestamp()))},
            "dispatched": {"BOOL": task.dispatched},
            "checkSeq": {"N": str(task.check_seq)},
            "expiresAt": {"N": str(self._expires_at(task.deadline))},
        }
        if task.platforms:
            item["platforms"] = {"L": [{"S": platform} for platform in task.platforms]}
        if task.targeting:
            item["targeting"] = {"S": json.dumps(task.targeting.to_api(), separators=(",", ":"))}
        item.update(lifecycle_attributes(task))  # keep-warm schedule, task token
        item["listShard"] = {"S": _list_shard(task.task_id)}
        item["listSk"] = {"S": _list_position(task)}
        item["statusShard"] = {"S": _status_shard(task.status, task.task_id)}
        put_task = {"TableName": self._table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
        try:
            if claim is None:
                self._client.put_item(**put_task)
                return
            # One atomic write: the task and the claim on its request exist together or not at all.
            self._client.transact_write_items(
                TransactItems=[{"Put": put_task}, {"Put": self._claim_put(task, claim, replaces)}]
            )
        except ClientError as exc:
            if claim is not None and _claim_refused(exc):
                raise ClaimHeld(self._claim_holder(claim)) from None
            raise DependencyFailure(f"could not record the task: {aws.reason(exc)}") from None
        except BotoCoreError as exc:
            raise DependencyFailure(f"could not record the task: {aws.reason(exc)}") from None

    def _claim_put(self, task: Task, claim: str, replaces: str | None) -> dict[str, Any]:
        put: dict[str, Any] = {
            "TableName": self._table,
            "Item": {
                "pk": {"S": f"{CLAIM_PREFIX}{claim}"},
                "taskId": {"S": task.task_id},
                # A claim outlives its task's deadline only briefly; a stale one is replaced anyway.
                "expiresAt": {"N": str(int(task.deadline.timestamp()) + 3600)},
            },
        }
        if replaces is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "attribute_not_exists(pk) OR taskId = :holder"
            put["ExpressionAttributeValues"] = {":holder": {"S": replaces}}
        return put

    def _claim_holder(self, claim: str) -> str | None:
        try:
            answer = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": f"{CLAIM_PREFIX}{claim}"}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not read the task: {aws.reason(exc)}") from None
        holder: str | None = answer.get("Item", {}).get("taskId", {}).get("S")
        return holder

    def get(self, task_id: str) -> Task | None:
        try:
            answer = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": task_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not read the task: {aws.reason(exc)}") from None
        item = answer.get("Item")
        return None if item is None else _task_from_item(item)

    def save(self, task: Task, expected_check_seq: int) -> bool:
        names = {"#status": "status", "#msg": "msg"}
        values: dict[str, Any] = {
            ":status": {"S": task.status.value},
            ":seq": {"N": str(task.check_seq)},
            ":expected": {"N": str(expected_check_seq)},
            ":running": {"S": TaskStatus.RUNNING.value},
            ":dispatched": {"BOOL": task.dispatched},
            ":statusShard": {"S": _status_shard(task.status, task.task_id)},
        }
        sets = [
            "#status = :status",
            "statusShard = :statusShard",
            "checkSeq = :seq",
            "dispatched = :dispatched",
        ]
        removes: list[str] = []
        if task.check_chain:
            values[":chain"] = {"S": task.check_chain}
            sets.append("checkChain = :chain")
        if task.blobs:
            set_progress(task, values, sets, removes)
        if task.message:
            values[":msg"] = {"S": cut(task.message, MAX_MESSAGE_CHARS)}
            sets.append("#msg = :msg")
        else:
            removes.append("#msg")
        if task.resolved_platforms:
            values[":resolved"] = {"L": [{"S": platform} for platform in task.resolved_platforms]}
            sets.append("resolvedPlatforms = :resolved")
        if task.skipped_attestations:
            values[":skipped"] = {"N": str(task.skipped_attestations)}
            sets.append("skippedAttestations = :skipped")
        if task.finished_at is not None:
            values[":finished"] = {"S": isoformat(task.finished_at)}
            values[":expires"] = {"N": str(self._expires_at(task.finished_at))}
            sets += ["finishedAt = :finished", "expiresAt = :expires"]
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": task.task_id}},
                UpdateExpression=expression,
                ConditionExpression="checkSeq = :expected AND #status = :running",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise DependencyFailure(f"could not update the task: {aws.reason(exc)}") from None
        except BotoCoreError as exc:
            raise DependencyFailure(f"could not update the task: {aws.reason(exc)}") from None
        return True

    def record_eviction(self, task: Task) -> bool:
        return record_eviction(self._client, self._table, task)

    def list_tasks(self, query: TaskQuery, *, now: datetime) -> TaskPage:
        """Newest first, every shard read from ``query.after`` down and merged by position: from
        ListIndex unfiltered, else from StatusIndex under the status asked for (FAIL adds the
        RUNNING tasks past their deadline, which read as FAIL), the type filtered by DynamoDB."""
        limit, after = query.limit, query.after
        per_shard = max(25, limit) if query.filtered else max(10, 2 * limit // LIST_SHARDS + 1)
        sources = _sources(query, now, self._settings.task_timeout_seconds)
        # The shards' first pages side by side: a page costs one round trip, not one per shard.
        with ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="list") as pool:
            first = list(pool.map(lambda source: self._query(source, after, per_shard, None), sources))
        streams = [
            self._stream(source, after, per_shard, answer)
            for source, answer in zip(sources, first, strict=True)
        ]
        merged = heapq.merge(*streams, key=lambda item: item["listSk"]["S"], reverse=True)
        tasks: list[Task] = []
        for examined, item in enumerate(merged, start=1):
            position = item["listSk"]["S"]
            task = _task_from_item(item)
            if query.matches(task, now):
                tasks.append(task)
            # Cut short only a page that shows something: an empty page with a cursor reads as
            # "No tasks" beside "Show more".
            if len(tasks) == limit or (tasks and examined >= MAX_EXAMINED):
                more = next(merged, None) is not None
                return TaskPage(tuple(tasks), position if more else None)
        return TaskPage(tuple(tasks), None)

    def _query(
        self, source: _Source, after: str | None, page: int, start: dict[str, Any] | None
    ) -> dict[str, Any]:
        condition = f"{source.key} = :shard"
        values: dict[str, Any] = {":shard": {"S": source.shard}, **source.values}
        if source.before is not None:
            after = source.before if after is None else min(after, source.before)
        if after is not None:
            condition += " AND listSk < :after"
            values[":after"] = {"S": after}
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": source.index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": page,
        }
        if source.filter:
            request["FilterExpression"] = source.filter
            request["ExpressionAttributeNames"] = source.names
        if start is not None:
            request["ExclusiveStartKey"] = start
        try:
            answer: dict[str, Any] = self._client.query(**request)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not list the tasks: {aws.reason(exc)}") from None
        return answer

    def _stream(
        self, source: _Source, after: str | None, page: int, answer: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """One shard's items in index order, reading the next page only when the merge needs it."""
        while True:
            yield from answer.get("Items", [])
            start = answer.get("LastEvaluatedKey")
            if not start:
                return
            answer = self._query(source, after, page, start)

    def overdue(self, query: OverdueQuery) -> Overdue:
        """RUNNING tasks past their deadline, from ListIndex: each shard read over the window of
        creation times alone (its sort key starts with the creation time), oldest first, the
        status and deadline filtered by DynamoDB, only the ids returned. Reads what the window
        holds, whatever the table holds; the shards side by side, as a listing reads them."""
        per_shard = max(1, -(-query.examine // LIST_SHARDS))
        shards = [f"{LIST_SHARD_PREFIX}{shard}" for shard in range(LIST_SHARDS)]
        with ThreadPoolExecutor(max_workers=LIST_SHARDS, thread_name_prefix="overdue") as pool:
            found = list(pool.map(lambda shard: self._overdue_in(shard, query, per_shard), shards))
        items = sorted((item for items, _ in found for item in items), key=lambda item: item["listSk"]["S"])
        return Overdue(tuple(item["pk"]["S"] for item in items), all(complete for _, complete in found))

    def _overdue_in(self, shard: str, query: OverdueQuery, budget: int) -> tuple[list[dict[str, Any]], bool]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": LIST_INDEX,
            "KeyConditionExpression": "listShard = :shard AND listSk BETWEEN :from AND :before",
            "FilterExpression": "#status = :running AND #deadline <= :now",
            "ProjectionExpression": "pk, listSk",
            "ExpressionAttributeNames": {"#status": "status", "#deadline": "deadline"},
            "ExpressionAttributeValues": {
                ":shard": {"S": shard},
                # A position is "<creation time>#<task id>": every task created at ``created_from``
                # sorts after the bare time, every one created at ``created_before`` after it too.
                ":from": {"S": isoformat(query.created_from)},
                ":before": {"S": isoformat(query.created_before)},
                ":running": {"S": TaskStatus.RUNNING.value},
                ":now": {"N": str(int(query.now.timestamp()))},
            },
            "ScanIndexForward": True,
        }
        items: list[dict[str, Any]] = []
        while budget > 0:
            # Limit counts the items read, before the filter: the budget bounds the read itself.
            request["Limit"] = min(budget, 1000)
            try:
                answer = self._client.query(**request)
            except (ClientError, BotoCoreError) as exc:
                raise DependencyFailure(f"could not find overdue tasks: {aws.reason(exc)}") from None
            items += answer.get("Items", [])
            budget -= int(answer.get("ScannedCount", request["Limit"]))
            start = answer.get("LastEvaluatedKey")
            if not start:
                return items, True
            request["ExclusiveStartKey"] = start
        return items, False

    # Aliases: other names of a task (the Dragonfly 2 compatible API's integer job ids). One item
    # each, written once with a condition; it expires with the task.

    def put_alias(self, alias: str, task: Task) -> bool:
        if "#" not in alias or alias.startswith(CLAIM_PREFIX):
            raise ValueError(f"an alias needs a '<kind>#' prefix other than {CLAIM_PREFIX!r}")
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": alias},
                    "taskId": {"S": task.task_id},
                    "expiresAt": {"N": str(self._expires_at(task.deadline))},
                },
                ConditionExpression="attribute_not_exists(pk) OR taskId = :task",
                ExpressionAttributeValues={":task": {"S": task.task_id}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise DependencyFailure(f"could not record the task: {aws.reason(exc)}") from None
        except BotoCoreError as exc:
            raise DependencyFailure(f"could not record the task: {aws.reason(exc)}") from None
        return True

    def get_alias(self, alias: str) -> str | None:
        try:
            answer = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": alias}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not read the task: {aws.reason(exc)}") from None
        task_id: str | None = answer.get("Item", {}).get("taskId", {}).get("S")
        return task_id


def _task_from_item(item: dict[str, Any]) -> Task:
    blobs = item.get("blobs", {}).get("B")
    created = parse_isoformat(item["createdAt"]["S"])
    evicted_at, evictions = eviction_from_item(item)
    assert created is not None
    return Task(
        task_id=item["pk"]["S"],
        type=PreheatType(item["type"]["S"]),
        url=item["url"]["S"],
        status=TaskStatus(item["status"]["S"]),
        created_at=created,
        deadline=datetime.fromtimestamp(int(item["deadline"]["N"]), UTC),
        finished_at=parse_isoformat(item.get("finishedAt", {}).get("S")),
        message=item.get("msg", {}).get("S"),
        blobs=blobs_from_binary(blobs),
        dispatched=item.get("dispatched", {}).get("BOOL", False),
        check_seq=int(item.get("checkSeq", {}).get("N", "0")),
        check_chain=item.get("checkChain", {}).get("S", ""),
        platforms=_strings(item.get("platforms")),
        resolved_platforms=_strings(item.get("resolvedPlatforms")),
        skipped_attestations=int(item.get("skippedAttestations", {}).get("N", "0")),
        targeting=_targeting(item.get("targeting")),
        layer_counts=_layer_counts(item.get("layerCounts")) if blobs is None else None,
        keep_warm=keep_warm_from_item(item),
        callback_token=token_from_item(item),
        evicted_at=evicted_at,
        evictions=evictions,
    )


def _list_shard(task_id: str) -> str:
    return f"{LIST_SHARD_PREFIX}{int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % LIST_SHARDS}"


def _status_shard(status: TaskStatus, task_id: str) -> str:
    """StatusIndex's partition key: the status, then the task's ListIndex shard number."""
    return f"{status.value}#{_list_shard(task_id).removeprefix(LIST_SHARD_PREFIX)}"


@dataclass(frozen=True)
class _Source:
    """One shard of one index a listing reads, with the filter DynamoDB applies to it."""

    index: str
    key: str
    shard: str
    filter: str = ""
    names: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    before: str | None = None  # read positions below this only


def _sources(query: TaskQuery, now: datetime, timeout_seconds: int) -> list[_Source]:
    """The shards a listing merges. The filters keep a superset of what ``query.matches`` keeps
    (deadlines are whole seconds, compared to the second below and above ``now``); it decides.

    FAIL takes from the RUNNING shards only the tasks created a task timeout ago or earlier (a
    deadline is the creation time plus the timeout): the RUNNING tasks still in time are never read
    for it. A task given a longer timeout by an earlier configuration shows once it is ended."""
    shards = [str(shard) for shard in range(LIST_SHARDS)]
    type_filter, values = "", {}
    names = {"#deadline": "deadline"}
    if query.type is not None:
        type_filter, values = "#type = :type", {":type": {"S": query.type.value}}
        names["#type"] = "type"

    def filtered(extra: str, extra_values: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
        clauses = [clause for clause in (type_filter, extra) if clause]
        # DynamoDB refuses a name the expression does not use.
        used = {name: value for name, value in names.items() if any(name in clause for clause in clauses)}
        return " AND ".join(clauses), used, {**values, **extra_values}

    if query.status is None:
        return [
            _Source(LIST_INDEX, "listShard", f"{LIST_SHARD_PREFIX}{shard}", *filtered("", {}))
            for shard in shards
        ]
    floor, ceiling = math.floor(now.timestamp()), math.ceil(now.timestamp())
    if query.status is TaskStatus.RUNNING:
        # A RUNNING task past its deadline reads as FAIL: left out by DynamoDB already.
        wanted = filtered("#deadline >= :now", {":now": {"N": str(floor)}})
        return [_Source(STATUS_INDEX, "statusShard", f"RUNNING#{shard}", *wanted) for shard in shards]
    sources = [
        _Source(STATUS_INDEX, "statusShard", f"{query.status.value}#{shard}", *filtered("", {}))
        for shard in shards
    ]
    if query.status is TaskStatus.FAIL:
        expired = filtered("#deadline <= :now", {":now": {"N": str(ceiling)}})
        # Sorts after every position created at that instant ("~" follows the task id's characters).
        before = f"{isoformat(now - timedelta(seconds=timeout_seconds))}#~"
        sources += [
            _Source(STATUS_INDEX, "statusShard", f"RUNNING#{shard}", *expired, before=before)
            for shard in shards
        ]
    return sources


def _list_position(task: Task) -> str:
    """Sorts as the creation time (fixed-width ISO 8601, UTC), ties broken by the task id."""
    return f"{isoformat(task.created_at)}#{task.task_id}"
