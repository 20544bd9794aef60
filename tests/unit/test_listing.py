"""Listing tasks (GET /api/preheat) against a moto server holding the template's own table and index:
newest first, filters, cursors that neither skip nor repeat while tasks arrive, and every bad
parameter refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.aws import MotoServer, provision
from local.template import Template
from preheat import bootstrap
from preheat.adapters import dynamodb
from preheat.adapters.dynamodb import LIST_SHARDS, DynamoDBTaskStore
from preheat.entrypoints.api import build_resolver, status_routes
from preheat.errors import InvalidRequest
from preheat.models import BlobProgress, BlobState, PreheatType, Task, TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from tests.support.fakes import Clock, FakeQueue
from tests.support.lambda_context import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

pytestmark = pytest.mark.xdist_group("moto")


@pytest.fixture(scope="module")
def moto():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(name, value)
        with MotoServer() as server:
            yield server.url


@pytest.fixture
def store(moto: str, request: pytest.FixtureRequest) -> DynamoDBTaskStore:
    """A fresh table (from template.yaml) per test, so counts are exact."""
    template = Template.load(ROOT / "template.yaml")
    prefix = f"list{abs(hash(request.node.name)) % 10**8}"
    resources = provision(template, moto, {"Supernodes": "http://127.0.0.1:8002"}, name_prefix=prefix)
    client = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
    return DynamoDBTaskStore(Settings(table_name=resources["TasksTable"].ref), client=client)


@pytest.fixture
def clock() -> Clock:
    return Clock(START + timedelta(days=1))


@pytest.fixture
def service(store: DynamoDBTaskStore, clock: Clock) -> PreheatService:
    return PreheatService(
        store, FakeQueue(), Settings(task_timeout_seconds=1800), clock=clock, dedup_key=lambda: b"k" * 32
    )


def make_task(
    n: int, *, status: TaskStatus = TaskStatus.SUCCESS, type: PreheatType = PreheatType.IMAGE
) -> Task:
    created = START + timedelta(seconds=n)
    return Task(
        task_id=f"00000000-0000-4000-8000-{n:012d}",
        type=type,
        url=f"reg.example.com/app:v{n}"
        if type is PreheatType.IMAGE
        else f"https://files.example.com/{n}.bin",
        status=status,
        created_at=created,
        deadline=created + timedelta(days=2),
        finished_at=None if status is TaskStatus.RUNNING else created + timedelta(seconds=3),
    )


def put(store: DynamoDBTaskStore, task: Task) -> Task:
    store.create(replace(task, status=TaskStatus.RUNNING, finished_at=None))
    if task.status is not TaskStatus.RUNNING:
        assert store.save(task, expected_check_seq=task.check_seq)
    return task


def walk(service: PreheatService, **query: str) -> list[list[str]]:
    """Every page of a listing, as task ids."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        tasks, cursor = service.list_tasks(cursor=cursor, **query)
        pages.append([task.task_id for task in tasks])
        if cursor is None:
            return pages


def test_pages_walk_every_task_newest_first_without_skipping_or_repeating(store, service):
    tasks = [put(store, make_task(n)) for n in range(57)]
    pages = walk(service, limit="10")
    assert [len(page) for page in pages] == [10, 10, 10, 10, 10, 7]
    listed = [task_id for page in pages for task_id in page]
    assert listed == [task.task_id for task in reversed(tasks)]
    # Every shard of the index holds some: the listing really merges them.
    shards = {item["listShard"]["S"] for item in _items(store)}
    assert len(shards) == LIST_SHARDS


def test_new_tasks_arriving_between_pages_are_neither_skipped_from_the_walk_nor_repeated(
    store, service, clock
):
    older = [put(store, make_task(n)) for n in range(30)]
    seen: list[str] = []
    tasks, cursor = service.list_tasks(limit="7")
    seen += [task.task_id for task in tasks]
    arrivals = 100
    while cursor is not None:
        # A burst of new tasks, newer than everything listed, between every two pages.
        for _ in range(5):
            put(store, make_task(arrivals))
            arrivals += 1
        tasks, cursor = service.list_tasks(limit="7", cursor=cursor)
        seen += [task.task_id for task in tasks]
    assert seen == [task.task_id for task in reversed(older)]
    assert len(set(seen)) == len(seen)
    # A new walk starts with the arrivals, newest first.
    first, _ = service.list_tasks(limit="3")
    assert [task.task_id for task in first] == [
        make_task(n).task_id for n in (arrivals - 1, arrivals - 2, arrivals - 3)
    ]


def test_filters_by_status_and_type_and_counts_a_task_past_its_deadline_as_fail(store, service, clock):
    statuses = [TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAIL]
    tasks = [
        put(
            store,
            make_task(n, status=statuses[n % 3], type=PreheatType.FILE if n % 4 == 0 else PreheatType.IMAGE),
        )
        for n in range(48)
    ]
    expired = put(
        store, replace(make_task(60, status=TaskStatus.RUNNING), deadline=clock.now - timedelta(seconds=1))
    )
    newest_first = list(reversed([*tasks, expired]))

    def ids(pages: list[list[str]]) -> list[str]:
        return [task_id for page in pages for task_id in page]

    for status in statuses:
        wanted = [
            t.task_id for t in newest_first if (TaskStatus.FAIL if t is expired else t.status) is status
        ]
        assert ids(walk(service, status=status.value, limit="5")) == wanted, status
    files = [t.task_id for t in newest_first if t.type is PreheatType.FILE]
    assert ids(walk(service, type="file", limit="4")) == files
    both = [t.task_id for t in newest_first if t.type is PreheatType.FILE and t.status is TaskStatus.SUCCESS]
    assert ids(walk(service, type="file", status="SUCCESS", limit="100")) == both
    # The expired task reads as get() would answer it.
    [listed] = list(service.list_tasks(status="FAIL", limit="1")[0])
    assert listed.task_id == expired.task_id
    assert listed.message is not None
    assert listed.message.startswith("timed out")


def test_a_listed_task_is_the_status_answer_without_blob_detail(store, service):
    task = make_task(1, status=TaskStatus.FAIL)
    blobs = (
        BlobProgress("sha256:" + "a" * 64, "http://sn:8002", BlobState.SUCCESS, size=10),
        BlobProgress("sha256:" + "b" * 64, "http://sn:8002", BlobState.FAILED, error="boom"),
    )
    put(store, replace(task, blobs=blobs, message="1 layer failed"))
    [listed], cursor = service.list_tasks()
    assert cursor is None
    assert listed.to_api() == service.get(task.task_id).to_api()
    assert listed.to_api()["layers"] == {"total": 2, "succeeded": 1, "failed": 1, "pending": 0}
    assert "blobs" not in listed.to_api()


def test_an_empty_table_lists_nothing(service):
    assert service.list_tasks() == ([], None)


def test_default_page_is_20_and_a_rare_status_is_read_through_its_own_index(store, service, monkeypatch):
    # Given 2 old FAIL tasks under 25 newer SUCCESS ones, and a call that may look at 10 tasks
    fails = [put(store, make_task(n, status=TaskStatus.FAIL)) for n in range(2)]
    for n in range(2, 27):
        put(store, make_task(n))
    tasks, cursor = service.list_tasks()
    assert len(tasks) == 20
    assert cursor is not None
    monkeypatch.setattr(dynamodb, "MAX_EXAMINED", 10)

    # When FAIL tasks are listed, 5 a page
    pages = walk(service, status="FAIL", limit="5")

    # Then the first page shows both (it was empty, with a cursor, after 10 SUCCESS tasks)
    assert pages == [[fails[1].task_id, fails[0].task_id]]


@pytest.mark.parametrize(
    "query",
    [{"status": "RUNNING"}, {"status": "FAIL"}, {"type": "file"}, {"status": "SUCCESS", "type": "file"}],
)
def test_a_filtered_page_is_never_empty_while_it_carries_a_cursor(store, service, clock, monkeypatch, query):
    # Given matches only among the oldest tasks, under many newer tasks that do not match, and
    # RUNNING tasks past their deadline (which read as FAIL) among the newest
    matching = [
        put(store, make_task(n, status=TaskStatus(query.get("status", "SUCCESS")), type=PreheatType.FILE))
        for n in range(3)
    ]
    for n in range(3, 40):
        put(store, make_task(n))  # newer SUCCESS images: no query matches them
    for n in range(40, 52):
        expired = replace(make_task(n, status=TaskStatus.RUNNING), deadline=clock.now - timedelta(seconds=5))
        put(store, expired)
    if query.get("status") == "SUCCESS":
        for n in range(52, 60):  # newer SUCCESS images: the type filter skips them
            put(store, make_task(n))
    monkeypatch.setattr(dynamodb, "MAX_EXAMINED", 4)

    # When the listing is walked 2 a page
    pages = walk(service, limit="2", **query)

    # Then no page is empty while it carries a cursor, and the walk finds every match in order
    assert all(page for page in pages[:-1]), pages
    listed = [task_id for page in pages for task_id in page]
    if query.get("status") == "FAIL":
        wanted = [make_task(n).task_id for n in range(51, 39, -1)] + [t.task_id for t in reversed(matching)]
    else:
        wanted = [t.task_id for t in reversed(matching)]
    assert listed == wanted


def test_a_fail_listing_reads_no_running_task_still_in_time(store, service, clock, monkeypatch):
    # Given 2 FAIL tasks, and 30 RUNNING tasks created a minute ago (deadline: creation + timeout)
    fails = [put(store, make_task(n, status=TaskStatus.FAIL)) for n in range(2)]
    for n in range(30):
        created = clock.now - timedelta(seconds=60 + n)
        put(
            store,
            replace(
                make_task(100 + n, status=TaskStatus.RUNNING),
                created_at=created,
                deadline=created + timedelta(seconds=1800),
            ),
        )
    scanned: dict[str, int] = {}
    real_query = store._client.query

    def query(**request: Any) -> dict[str, Any]:
        answer = real_query(**request)
        shard = request["ExpressionAttributeValues"][":shard"]["S"]
        scanned[shard] = scanned.get(shard, 0) + answer["ScannedCount"]
        return answer

    monkeypatch.setattr(store._client, "query", query)

    # When FAIL tasks are listed
    tasks, cursor = service.list_tasks(status="FAIL")

    # Then both show, and DynamoDB evaluated none of the RUNNING tasks for it
    assert [task.task_id for task in tasks] == [fails[1].task_id, fails[0].task_id]
    assert cursor is None
    assert sum(count for shard, count in scanned.items() if shard.startswith("FAIL#")) == 2
    assert sum(count for shard, count in scanned.items() if shard.startswith("RUNNING#")) == 0


def test_every_write_of_a_status_moves_the_task_in_the_status_index(store):
    task = put(store, make_task(1, status=TaskStatus.RUNNING))
    [item] = _items(store)
    assert item["statusShard"]["S"] == f"RUNNING#{item['listShard']['S'].removeprefix('tasks#')}"

    store.save(replace(task, status=TaskStatus.SUCCESS, finished_at=task.created_at), task.check_seq)

    [item] = _items(store)
    assert item["statusShard"]["S"] == f"SUCCESS#{item['listShard']['S'].removeprefix('tasks#')}"


def _items(store: DynamoDBTaskStore) -> list[dict[str, Any]]:
    client = store._client
    return client.scan(TableName=store._table)["Items"]


def _resolve(query: dict[str, str] | None) -> dict[str, Any]:
    event = json.loads((EVENTS / "list.json").read_text())
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    answer = build_resolver(status_routes()).resolve(event, LambdaContext())
    assert answer["statusCode"] == 200
    return json.loads(answer["body"])


def _tampered(cursor: str) -> str:
    payload, mac = cursor.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["a"] = "9999-12-31T00:00:00.000Z#x"
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{forged}.{mac}"


def test_the_route_answers_the_envelope_and_refuses_every_bad_parameter(store, service, monkeypatch):
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: service)
    for n in range(5):
        put(store, make_task(n))
    first = _resolve({"limit": "2"})
    assert first["code"] == 200
    assert [t["taskId"] for t in first["data"]["tasks"]] == [make_task(n).task_id for n in (4, 3)]
    assert first["data"]["tasks"][0]["status"] == "SUCCESS"
    cursor = first["data"]["next"]
    assert isinstance(cursor, str)
    second = _resolve({"limit": "2", "cursor": cursor})
    assert [t["taskId"] for t in second["data"]["tasks"]] == [make_task(n).task_id for n in (2, 1)]
    assert _resolve({"limit": "100"})["data"]["next"] is None
    assert len(_resolve(None)["data"]["tasks"]) == 5

    bad = {
        "limit": ["0", "101", "-1", "2.5", "ten", "", "１"],
        "status": ["running", "DONE", ""],
        "type": ["IMAGE", "dir", ""],
        "cursor": ["", "abc", "abc.def", _tampered(cursor), cursor[:-2], cursor + "A", "x" * 5000],
    }
    for name, values in bad.items():
        for value in values:
            answer = _resolve({name: value})
            assert answer["code"] == 400, (name, value, answer)
            assert f"'{name}'" in answer["msg"], answer
            assert "data" not in answer
    # A cursor carries its filters: using it with others is refused, not misread.
    answer = _resolve({"cursor": cursor, "status": "SUCCESS"})
    assert answer["code"] == 400
    assert "other filters" in answer["msg"]


def test_a_cursor_from_another_deployment_is_refused(store, service, clock):
    for n in range(3):
        put(store, make_task(n))
    _, cursor = service.list_tasks(limit="1")
    assert cursor is not None
    other = PreheatService(store, FakeQueue(), Settings(), clock=clock, dedup_key=lambda: b"o" * 32)
    with pytest.raises(InvalidRequest, match="'cursor'"):
        other.list_tasks(limit="1", cursor=cursor)


def test_a_tasks_targeting_is_stored_and_shown_by_status_and_listing(store, service):
    from preheat.models import Targeting

    task = replace(make_task(1, status=TaskStatus.RUNNING), targeting=Targeting("all_peers", (1, 2), count=5))
    put(store, task)
    assert store.get(task.task_id) == task
    [listed], _ = service.list_tasks()
    for answer in (listed.to_api(), service.get(task.task_id).to_api()):
        assert (answer["scope"], answer["clusterIds"], answer["count"]) == ("all_peers", [1, 2], 5)
        assert "ips" not in answer
