"""The domain service: submit and read tasks, over fakes of the store and the queue."""

from dataclasses import replace

import pytest

from preheat.errors import DependencyFailure, InvalidRequest, TaskNotFound
from preheat.models import PreheatRequest, Step, TaskStatus
from preheat.service import PreheatService, unreachable_supernodes
from preheat.settings import Settings
from tests.support.fakes import Clock, FakeQueue, FakeSupernodes, FakeTaskStore

SETTINGS = Settings(task_timeout_seconds=60)


@pytest.fixture
def parts():
    store, queue, clock = FakeTaskStore(), FakeQueue(), Clock()
    return store, queue, clock, PreheatService(store, queue, SETTINGS, clock=clock)


def image_request(**header):
    return PreheatRequest.parse({"type": "image", "url": "h.io/app:v1", "header": header})


def test_submit_records_a_running_task_and_queues_its_first_step_with_the_credentials(parts):
    store, queue, _clock, service = parts
    task = service.submit(image_request(Authorization="Bearer tok"))
    assert store.tasks[task.task_id].status is TaskStatus.RUNNING
    assert store.tasks[task.task_id].url == "h.io/app:v1"
    [sent] = queue.sent
    assert sent.message.step is Step.START
    assert sent.message.task_id == task.task_id
    assert sent.message.headers.reveal() == {"Authorization": "Bearer tok"}
    assert (task.deadline - task.created_at).total_seconds() == 60


def test_a_task_the_queue_refused_is_not_left_running(parts):
    store, queue, _, service = parts
    queue.fail_next = 1
    with pytest.raises(DependencyFailure):
        service.submit(image_request())
    [task] = store.tasks.values()
    assert task.status is TaskStatus.FAIL
    assert "could not queue" in (task.message or "")


def test_a_store_failure_queues_nothing(parts):
    store, queue, _, service = parts
    store.fail_next = 1
    with pytest.raises(DependencyFailure):
        service.submit(image_request())
    assert queue.sent == []
    assert store.tasks == {}


def test_reading_checks_the_id_format_before_any_lookup(parts):
    store, _, _, service = parts
    store.fail_next = 1  # would raise DependencyFailure if a lookup happened
    with pytest.raises(InvalidRequest, match="is not a task id"):
        service.get("../../etc/passwd")


def test_an_unknown_task_is_not_found(parts):
    _, _, _, service = parts
    with pytest.raises(TaskNotFound):
        service.get("0f8fad5b-d9cb-469f-a165-70867728950e")


def test_a_running_task_past_its_deadline_reads_as_fail_timed_out(parts):
    _, _, clock, service = parts
    task = service.submit(image_request())
    assert service.get(task.task_id).status is TaskStatus.RUNNING
    clock.advance(61)
    read = service.get(task.task_id)
    assert read.status is TaskStatus.FAIL
    assert read.message is not None
    assert read.message.startswith("timed out")


def test_check_names_each_unreachable_supernode():
    nodes = FakeSupernodes(("http://a:8002", "http://b:8002"))
    assert unreachable_supernodes(nodes) == {}
    nodes.down.add("http://b:8002")
    assert unreachable_supernodes(nodes) == {"http://b:8002": "connection refused"}
    assert "PREHEAT_SUPERNODES" in unreachable_supernodes(FakeSupernodes(()))["(none)"]


def dedup_service(store=None, queue=None, clock=None, key=b"k" * 32):
    return PreheatService(
        store or FakeTaskStore(),
        queue or FakeQueue(),
        SETTINGS,
        clock=clock or Clock(),
        dedup_key=lambda: key,
    )


def test_an_identical_request_while_running_answers_the_same_task():
    store, queue = FakeTaskStore(), FakeQueue()
    service = dedup_service(store, queue)
    first = service.submit(image_request(Authorization="Basic a"))
    again = service.submit(
        PreheatRequest.parse(
            {
                "type": "image",
                "url": "https://h.io/v2/app/manifests/v1",
                "header": {"authorization": "Basic a"},
            }
        )
    )
    assert again.task_id == first.task_id  # the Harbor URL form names the same image
    assert len(store.tasks) == 1
    assert len(queue.sent) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"type": "image", "url": "h.io/app:v2"},
        {"type": "image", "url": "h.io/app:v1", "platform": "linux/arm64"},
        {"type": "image", "url": "h.io/app:v1", "header": {"Authorization": "Basic b"}},
    ],
)
def test_a_different_image_platform_or_credential_starts_another_task(other):
    store = FakeTaskStore()
    service = dedup_service(store)
    first = service.submit(image_request())
    assert service.submit(PreheatRequest.parse(other)).task_id != first.task_id
    assert len(store.tasks) == 2


def test_once_finished_the_same_request_starts_a_fresh_task():
    store, clock = FakeTaskStore(), Clock()
    service = dedup_service(store, clock=clock)
    first = service.submit(image_request())
    store.save(replace(first, status=TaskStatus.SUCCESS, finished_at=clock(), check_seq=1), 0)
    second = service.submit(image_request())
    assert second.task_id != first.task_id
    assert set(store.claims.values()) == {second.task_id}


def test_a_task_past_its_deadline_does_not_hold_its_request():
    store, clock = FakeTaskStore(), Clock()
    service = dedup_service(store, clock=clock)
    first = service.submit(image_request())
    clock.advance(61)
    assert service.submit(image_request()).task_id != first.task_id


def test_the_claim_never_holds_the_credentials():
    store = FakeTaskStore()
    dedup_service(store).submit(image_request(Authorization="Bearer CANARY-DEDUP"))
    assert "CANARY" not in repr(store.claims)
    # A different key gives a different claim: the hash is keyed, not a plain digest.
    other = FakeTaskStore()
    dedup_service(other, key=b"x" * 32).submit(image_request(Authorization="Bearer CANARY-DEDUP"))
    assert set(store.claims) != set(other.claims)


def test_reading_an_expired_task_writes_fail_back(parts):
    store, _, clock, service = parts
    task = service.submit(image_request())
    clock.advance(61)
    service.get(task.task_id)
    assert store.tasks[task.task_id].status is TaskStatus.FAIL
    assert (store.tasks[task.task_id].message or "").startswith("timed out")
