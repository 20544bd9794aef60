"""The DynamoDB and SQS adapters against a moto server holding the template's own table and queues."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.aws import MotoServer, provision
from local.template import Template
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.dynamodb_progress import PEER_CUTS
from preheat.adapters.sqs import SqsTaskQueue
from preheat.errors import DependencyFailure, ProgressTooLarge
from preheat.models import (
    BlobProgress,
    BlobState,
    Credentials,
    PeerCopy,
    PreheatType,
    Step,
    Task,
    TaskStatus,
    WorkerMessage,
)
from preheat.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.xdist_group("moto")


@pytest.fixture(scope="module")
def aws(monkeypatch_module):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(name, value)
    with MotoServer() as server:
        template = Template.load(ROOT / "template.yaml")
        resources = provision(template, server.url, {"Supernodes": "http://127.0.0.1:8002"})
        yield server.url, resources


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def store(aws) -> DynamoDBTaskStore:
    url, resources = aws
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    return DynamoDBTaskStore(Settings(table_name=resources["TasksTable"].ref, task_ttl_days=7), client=client)


def new_task(task_id: str) -> Task:
    now = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    return Task(
        task_id=task_id,
        type=PreheatType.IMAGE,
        url="127.0.0.1:5001/demo/app:v1",
        status=TaskStatus.RUNNING,
        created_at=now,
        deadline=now + timedelta(minutes=30),
    )


def test_a_task_round_trips_with_its_blob_progress(store):
    task = new_task("00000000-0000-4000-8000-000000000001")
    store.create(task)
    assert store.get(task.task_id) == task
    blobs = (
        BlobProgress(
            "sha256:" + "a" * 64, "http://sn1:8002", BlobState.SUCCESS, "sha256:" + "a" * 64, 12, "id1"
        ),
        BlobProgress("sha256:" + "b" * 64, "http://sn1:8002", BlobState.FAILED, None, None, "id2", "boom"),
        # The URL handed over, and a node task id equal to the supernode's (stored once) or not.
        BlobProgress(
            *("sha256:" + "c" * 64, "http://sn1:8002", BlobState.PENDING, None, 3, "id3", None),
            url="http://registry:5000/v2/app/blobs/sha256:" + "c" * 64,
            node_task_id="id3",
        ),
        BlobProgress(
            *("sha256:" + "d" * 64, "http://sn2:8002", BlobState.SUCCESS, None, 4, "job-7", None),
            url="http://registry:5000/v2/app/blobs/sha256:" + "d" * 64,
            node_task_id="e" * 64,
        ),
    )
    moved = replace(task, blobs=blobs, dispatched=True, check_seq=1, message="note")
    assert store.save(moved, expected_check_seq=0)
    assert store.get(task.task_id) == moved
    cleared = replace(moved, message=None)
    assert store.save(cleared, expected_check_seq=1)
    assert store.get(task.task_id) == cleared


def test_creating_the_same_task_twice_is_refused(store):
    task = new_task("00000000-0000-4000-8000-000000000002")
    store.create(task)
    with pytest.raises(DependencyFailure, match="ConditionalCheckFailed"):
        store.create(task)


def test_a_stale_or_finished_task_is_not_overwritten(store):
    task = new_task("00000000-0000-4000-8000-000000000003")
    store.create(task)
    assert store.save(replace(task, check_seq=1), expected_check_seq=0)
    assert not store.save(replace(task, check_seq=2, message="stale"), expected_check_seq=0)
    done = replace(task, status=TaskStatus.SUCCESS, check_seq=2, finished_at=task.created_at)
    assert store.save(done, expected_check_seq=1)
    assert not store.save(replace(done, status=TaskStatus.FAIL, check_seq=3), expected_check_seq=2)
    assert store.get(task.task_id) == done


def test_an_eviction_is_recorded_once_on_a_finished_task_and_an_unknown_one_records_nothing(store):
    from preheat.models import BlobEviction

    task = new_task("00000000-0000-4000-8000-0000000000e1")
    store.create(task)
    done = replace(task, status=TaskStatus.SUCCESS, check_seq=1, finished_at=task.created_at)
    assert store.save(done, expected_check_seq=0)
    evictions = tuple(
        BlobEviction(f"sha256:{n:064x}", "http://sn1:8002", "evicted" if n else "supernode did not answer")
        for n in range(1000)
    )
    evicted = replace(done, evicted_at=task.created_at + timedelta(hours=1), evictions=evictions)

    assert store.record_eviction(evicted)
    assert not store.record_eviction(replace(evicted, evicted_at=task.created_at + timedelta(hours=2)))
    assert store.get(task.task_id) == evicted
    assert not store.record_eviction(replace(evicted, task_id="00000000-0000-4000-8000-0000000000e2"))
    assert store.get("00000000-0000-4000-8000-0000000000e2") is None


def test_finished_tasks_expire_after_the_retention(store, aws):
    url, resources = aws
    task = new_task("00000000-0000-4000-8000-000000000004")
    store.create(task)
    finished_at = task.created_at + timedelta(minutes=3)
    store.save(replace(task, status=TaskStatus.SUCCESS, finished_at=finished_at, check_seq=1), 0)
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    item = client.get_item(TableName=resources["TasksTable"].ref, Key={"pk": {"S": task.task_id}})["Item"]
    assert int(item["expiresAt"]["N"]) == int((finished_at + timedelta(days=7)).timestamp())


def test_a_thousand_layers_on_three_supernodes_fit_in_one_item(store):
    rng = random.Random(7)
    blobs = tuple(
        BlobProgress(
            label=(digest := "sha256:" + "".join(rng.choices("0123456789abcdef", k=64))),
            target=f"http://supernode-{n}.example.internal:8002",
            state=BlobState.PENDING,
            digest=digest,
            size=rng.randrange(1, 1 << 30),
            supernode_task_id="".join(rng.choices("0123456789abcdef", k=64)),
        )
        for _ in range(1000)
        for n in range(3)
    )
    task = new_task("00000000-0000-4000-8000-000000000005")
    store.create(task)
    assert store.save(replace(task, blobs=blobs, dispatched=True, check_seq=1), expected_check_seq=0)
    stored = store.get(task.task_id)
    assert stored is not None
    assert stored.blobs == blobs


def _item_size(item: dict) -> int:
    """An item's size as DynamoDB counts it against its 400 KB limit: attribute names plus values
    (strings as UTF-8, binaries as bytes, numbers about one byte per two digits, lists and flags a
    few bytes each)."""

    def value_size(value: dict) -> int:
        (kind, data), *_ = value.items()
        if kind == "S":
            return len(data.encode())
        if kind == "B":
            return len(data)
        if kind == "N":
            return len(data) // 2 + 2
        if kind == "BOOL":
            return 1
        if kind == "L":
            return 3 + sum(value_size(element) + 1 for element in data)
        raise AssertionError(kind)

    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


# What a task's item may hold at the service's own limits: every blob an image may have (1024 unique
# over all its platforms), on three supernodes, each failed with a long error of its own.
MAX_BLOBS = 1024


def _failed_everywhere(rng: random.Random, error_chars: int) -> tuple[BlobProgress, ...]:
    def noise(k: int) -> str:
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789 ", k=k))

    def hex_id() -> str:
        return "".join(rng.choices("0123456789abcdef", k=64))

    blobs = [("sha256:" + hex_id(), hex_id(), rng.randrange(1, 1 << 40)) for _ in range(MAX_BLOBS)]
    return tuple(
        BlobProgress(
            label=digest,
            target=f"http://supernode-{n}.example.internal:8002",
            state=BlobState.FAILED,
            digest=digest,
            size=size,
            # The worst case: each supernode's own id differs from the id a node computes (a filter
            # or identifier of the supernodes' own), which depends on the blob's URL alone.
            supernode_task_id=hex_id(),
            error=f"supernode http://supernode-{n}.example.internal:8002 failed task: {noise(error_chars)}",
            url=f"https://registry.example.com/v2/platform-team/service-image/blobs/{digest}",
            node_task_id=node_task_id,
        )
        for digest, node_task_id, size in blobs
        for n in range(3)
    )


@pytest.mark.parametrize("error_chars", [0, 300, 2000])
def test_an_item_at_the_service_limits_with_long_errors_stays_under_dynamodbs_limit(store, aws, error_chars):
    url, resources = aws
    blobs = _failed_everywhere(random.Random(error_chars), error_chars)
    task = new_task(f"00000000-0000-4000-8000-{error_chars:012d}")
    store.create(task)
    message = "1024 of 1024 layer(s) failed to preheat: " + "x" * 20000
    failed = replace(task, blobs=blobs, status=TaskStatus.FAIL, message=message, check_seq=1)
    assert store.save(failed, expected_check_seq=0)  # moto refuses an item over 400 KB, as DynamoDB does
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    item = client.get_item(TableName=resources["TasksTable"].ref, Key={"pk": {"S": task.task_id}})["Item"]
    size = _item_size(item)
    print(f"task item with {len(blobs)} blobs and {error_chars}-character errors: {size} bytes")
    assert size < 400 * 1024
    # moto (the local stack's DynamoDB) counts the binary as base64 and refuses above 405,000 bytes,
    # leaving a refused update half-applied: the item must fit as it counts too.
    assert size + len(item["blobs"]["B"]) // 3 + 4 < 405_000
    stored = store.get(task.task_id)
    assert stored is not None
    assert [(b.label, b.target, b.state, b.digest, b.size, b.url, b.node_task_id) for b in stored.blobs] == [
        (b.label, b.target, b.state, b.digest, b.size, b.url, b.node_task_id) for b in blobs
    ]
    # Every blob keeps the start of its error, which names its supernode.
    for original, kept in zip(blobs, stored.blobs, strict=True):
        assert kept.error is not None
        assert original.error is not None
        assert original.error.startswith(kept.error.removesuffix("..."))
        assert kept.error.startswith("supernode http://supernode-")
    # Big items would push other tests' items past the first page of their scans.
    client.delete_item(TableName=resources["TasksTable"].ref, Key={"pk": {"S": task.task_id}})


def test_a_task_holding_large_progress_can_still_be_written_and_ended(store, aws):
    """A start step that ran out of time records what it created (1000 blobs, each failed with a
    long error) for its retry; every later write rewrites that progress, and the deadline's FAIL
    write must go through (moto once counted the replaced progress too, and refused them all)."""
    url, resources = aws
    blobs = _failed_everywhere(random.Random(7), 2000)[::3][:1000]
    task = new_task("00000000-0000-4000-8000-000000000700")
    store.create(task)
    assert store.save(
        replace(task, blobs=blobs, message="retrying after: " + "e" * 3000), expected_check_seq=0
    )
    recorded = store.get(task.task_id)
    assert recorded is not None
    ended = replace(
        recorded, status=TaskStatus.FAIL, message=recorded.timed_out_message(), finished_at=recorded.deadline
    )

    assert store.save(ended, expected_check_seq=recorded.check_seq)

    stored = store.get(task.task_id)
    assert stored is not None
    assert stored.status is TaskStatus.FAIL
    assert stored.finished_at == recorded.deadline
    assert len(stored.blobs) == 1000
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    client.delete_item(TableName=resources["TasksTable"].ref, Key={"pk": {"S": task.task_id}})


def test_progress_beyond_any_cut_is_refused_while_running_and_dropped_from_an_ended_task(store, aws):
    """Eight supernodes at once for an image at the blob limit: 8192 blob copies, whose ids alone do
    not fit in an item however short the errors. A RUNNING task is refused before DynamoDB would
    refuse it (ProgressTooLarge, which the worker turns into FAIL); an ended one is written with its
    counts and message, without the per-blob detail, so that no task is left RUNNING by its size."""
    rng = random.Random(8)
    three = _failed_everywhere(rng, 0)
    blobs = tuple(
        replace(
            blob,
            target=f"http://supernode-{n}.example.internal:8002",
            state=BlobState.PENDING,  # a pending copy keeps its supernode's task id, to poll it
            error=None,
            supernode_task_id=f"{rng.getrandbits(256):064x}",
            node_task_id=f"{rng.getrandbits(256):064x}",
        )
        for blob in three[::3]
        for n in range(8)
    )
    task = new_task("00000000-0000-4000-8000-000000008192")
    store.create(task)

    with pytest.raises(ProgressTooLarge, match="8192 blob copies") as refused:
        store.save(replace(task, blobs=blobs, check_seq=1), expected_check_seq=0)
    assert refused.value.blobs == blobs
    assert store.get(task.task_id) == task  # nothing written

    failed = replace(task, blobs=blobs, status=TaskStatus.FAIL, message=str(refused.value), check_seq=1)
    assert store.save(failed, expected_check_seq=0)
    stored = store.get(task.task_id)
    assert stored is not None
    assert (stored.status, stored.blobs, stored.message) == (TaskStatus.FAIL, (), str(refused.value))
    assert stored.to_api()["layers"] == {"total": 1024, "succeeded": 0, "failed": 0, "pending": 1024}
    url, resources = aws
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    client.delete_item(TableName=resources["TasksTable"].ref, Key={"pk": {"S": task.task_id}})


def test_a_schedulers_peers_round_trip_capped_per_blob_with_their_counts(store):
    """The peers a scheduler reports are stored with the blob (its manifest too), at most
    PEER_CUTS[0] of them; how many there were, finished or not, survives the cap."""
    task = new_task("00000000-0000-4000-8000-000000000077")
    store.create(task)
    peers = tuple(PeerCopy(f"node-{n}", f"10.0.1.{n}", n % 2 == 0) for n in range(40))
    blob = BlobProgress(
        *("sha256:" + "f" * 64, "scheduler-0:8002", BlobState.PENDING, None, 7, "id7", "waits"),
        manifest_url="https://reg.example.com/v2/app/manifests/sha256:" + "9" * 64,
    ).looked(BlobState.PENDING, "waits", peers)
    assert store.save(replace(task, blobs=(blob,), check_seq=1), expected_check_seq=0)

    stored = store.get(task.task_id)
    assert stored is not None
    kept = stored.blobs[0]
    assert kept.peers == peers[: PEER_CUTS[0]]
    assert (kept.peer_count, kept.finished_peer_count) == (40, 20)
    assert kept.manifest_url == blob.manifest_url
    answer = kept.to_api()
    assert (answer["peerCount"], answer["finishedPeers"]) == (40, 20)
    assert answer["peers"][0] == {"hostname": "node-0", "ip": "10.0.1.0", "finished": True}


def test_an_unreachable_table_is_a_dependency_failure():
    client = boto3.client(
        "dynamodb",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.5),
    )
    store = DynamoDBTaskStore(Settings(), client=client)
    with pytest.raises(DependencyFailure, match="could not record the task"):
        store.create(new_task("00000000-0000-4000-8000-000000000006"))


def test_queue_messages_carry_the_step_delay_and_attributes_but_credentials_only_in_the_body(aws):
    url, resources = aws
    queue_url = resources["PreheatQueue"].ref
    sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1")
    queue = SqsTaskQueue(Settings(queue_url=queue_url), client=sqs)
    queue.send(WorkerMessage("t-1", Step.START, headers=Credentials({"Authorization": "Bearer CANARY"})))
    queue.send(WorkerMessage("t-1", Step.CHECK, seq=3), delay_seconds=2)
    [first] = sqs.receive_message(QueueUrl=queue_url, MessageAttributeNames=["All"], MaxNumberOfMessages=10)[
        "Messages"
    ]
    assert WorkerMessage.from_json(first["Body"]).headers.reveal() == {"Authorization": "Bearer CANARY"}
    attributes = {k: v["StringValue"] for k, v in first["MessageAttributes"].items()}
    assert attributes == {"taskId": "t-1", "step": "start"}
    assert "CANARY" not in json.dumps(first["MessageAttributes"])
    # The delayed check is not visible yet.
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)


def test_a_queue_failure_is_a_dependency_failure_without_the_body():
    sqs = boto3.client(
        "sqs",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.5),
    )
    queue = SqsTaskQueue(Settings(queue_url="http://127.0.0.1:9/123/q"), client=sqs)
    with pytest.raises(DependencyFailure) as caught:
        queue.send(WorkerMessage("t-1", Step.START, headers=Credentials({"Authorization": "Bearer CANARY"})))
    assert "CANARY" not in str(caught.value)


@pytest.fixture
def serializable_moto(monkeypatch):
    """DynamoDB isolates a transaction from every other request (serializable isolation); moto
    does not, so concurrent transactions against it can interleave. Restore the guarantee the
    service relies on by running moto's DynamoDB operations one at a time."""
    import threading

    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("transact_write_items", "put_item", "get_item", "update_item"):
        original = getattr(DynamoDBBackend, name)

        def serialized(self, *args, __original=original, **kwargs):
            with lock:
                return __original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, serialized)


@pytest.mark.usefixtures("serializable_moto")
def test_concurrent_identical_requests_start_exactly_one_task(aws):
    from concurrent.futures import ThreadPoolExecutor

    from preheat.models import PreheatRequest
    from preheat.service import PreheatService
    from tests.support.fakes import FakeQueue

    url, resources = aws
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    store = DynamoDBTaskStore(Settings(table_name=resources["TasksTable"].ref), client=client)
    queue = FakeQueue()
    service = PreheatService(store, queue, Settings(), dedup_key=lambda: b"key")
    request = PreheatRequest.parse(
        {"type": "image", "url": "race.io/app:v1", "header": {"Authorization": "Basic x"}}
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lambda _: service.submit(request).task_id, range(16)))
    assert len(ids) == 1
    assert len(queue.sent) == 1
    [task_id] = ids
    task = store.get(task_id)
    assert task is not None
    store.save(replace(task, status=TaskStatus.SUCCESS, finished_at=task.created_at, check_seq=1), 0)
    assert service.submit(request).task_id != task_id


def test_claim_items_hold_no_credentials(aws):
    from preheat.models import PreheatRequest
    from preheat.service import PreheatService
    from tests.support.fakes import FakeQueue

    url, resources = aws
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    store = DynamoDBTaskStore(Settings(table_name=resources["TasksTable"].ref), client=client)
    service = PreheatService(store, FakeQueue(), Settings(), dedup_key=lambda: b"key")
    service.submit(
        PreheatRequest.parse({"type": "file", "url": "https://f.io/x", "header": {"X-Token": "CANARY-CLAIM"}})
    )
    items = client.scan(TableName=resources["TasksTable"].ref)["Items"]
    assert "CANARY-CLAIM" not in repr(items)
    assert any(item["pk"]["S"].startswith("claim#") for item in items)


def test_a_failed_write_is_reported_by_its_code_never_by_what_the_server_said():
    """An answer that is not DynamoDB's (a proxy's or an emulator's HTML error page) must not reach
    the API's caller: the reason is the error's code alone."""

    class Refusing:
        def transact_write_items(self, **_: object) -> None:
            page = "<!doctype html><title>500 Internal Server Error</title>"
            raise ClientError({"Error": {"Code": "500", "Message": page}}, "TransactWriteItems")

        put_item = transact_write_items

    store = DynamoDBTaskStore(Settings(), client=Refusing())
    with pytest.raises(DependencyFailure) as raised:
        store.create(new_task("00000000-0000-4000-8000-000000000007"), claim="claim#x")
    assert str(raised.value) == "could not record the task: 500"


def test_an_update_refused_part_way_leaves_the_item_as_it_was(aws):
    """The local moto applies an update whole or not at all, as DynamoDB does
    (local.aws.atomic_updates): an update whose last action makes the item too large changes
    nothing, not even the actions before it."""
    url, resources = aws
    table = resources["TasksTable"].ref
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    before = {"pk": {"S": "upd#big"}, "status": {"S": "RUNNING"}, "n": {"N": "1"}}
    client.put_item(TableName=table, Item=before)
    with pytest.raises(ClientError, match="ValidationException"):
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "upd#big"}},
            UpdateExpression="SET #status = :fail, n = :two, big = :big",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":fail": {"S": "FAIL"},
                ":two": {"N": "2"},
                ":big": {"S": "x" * 410_000},
            },
        )
    assert client.get_item(TableName=table, Key={"pk": {"S": "upd#big"}})["Item"] == before


def test_a_failed_transaction_leaves_every_item_as_it_was(aws):
    """The local moto backs a transaction up by the items it names rather than by the whole table
    (local.aws.cheap_transaction_backups): a transaction cancelled by its last item still undoes a
    put, an in-place update and a delete of the items before it, and leaves the others alone."""
    url, resources = aws
    table = resources["TasksTable"].ref
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    before = {
        "keep": {"pk": {"S": "tx#keep"}, "n": {"N": "1"}},
        "update": {"pk": {"S": "tx#update"}, "n": {"N": "1"}},
        "delete": {"pk": {"S": "tx#delete"}, "n": {"N": "1"}},
        "held": {"pk": {"S": "tx#held"}, "n": {"N": "1"}},
    }
    for item in before.values():
        client.put_item(TableName=table, Item=item)

    with pytest.raises(ClientError, match="TransactionCanceled"):
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {"pk": {"S": "tx#new"}}}},
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"pk": {"S": "tx#update"}},
                        "UpdateExpression": "SET n = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
                {"Delete": {"TableName": table, "Key": {"pk": {"S": "tx#delete"}}}},
                {
                    "Put": {
                        "TableName": table,
                        "Item": {"pk": {"S": "tx#held"}, "n": {"N": "9"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )

    def read(key: str) -> dict[str, object] | None:
        answer = client.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)
        item: dict[str, object] | None = answer.get("Item")
        return item

    assert read("tx#new") is None
    for name, item in before.items():
        assert read(f"tx#{name}") == item, name
