"""The worker's steps over fakes: the happy path, failures, and every step run twice."""

import hashlib
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from preheat.errors import PermanentFailure, ProgressTooLarge, TransientFailure
from preheat.models import (
    Blob,
    BlobProgress,
    BlobState,
    Credentials,
    ImageResolution,
    LayerCounts,
    PreheatRequest,
    PreheatType,
    Step,
    Task,
    TaskStatus,
)
from preheat.ports import UNBOUNDED
from preheat.retry import step_retry_delay
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import FIRST_LOOK_SECONDS, Worker, give_up
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore

SETTINGS = Settings(
    task_timeout_seconds=600, poll_initial_delay_seconds=1, poll_max_delay_seconds=8, check_window_seconds=0
)
IMAGE = "h.io/app:v1"
LAYERS = [Blob(url=f"https://h.io/v2/app/blobs/sha256:{c * 64}", digest=f"sha256:{c * 64}") for c in "abc"]
TWO_NODES = ("http://sn1:8002", "http://sn2:8002")


class World:
    def __init__(self, targets=TWO_NODES):
        self.store, self.queue, self.clock = FakeTaskStore(), FakeQueue(), Clock()
        self.registry = FakeRegistry(images={IMAGE: LAYERS})
        self.nodes = FakeSupernodes(targets)
        self.service = PreheatService(self.store, self.queue, SETTINGS, clock=self.clock)
        self.worker = Worker(self.store, self.queue, self.registry, self.nodes, SETTINGS, clock=self.clock)

    def submit(self, body=None):
        body = body or {"type": "image", "url": IMAGE, "header": {"Authorization": "Basic czNjcjN0"}}
        return self.service.submit(PreheatRequest.parse(body)).task_id

    def run(self, body=None):
        """Submit ``body`` and deliver its start step; the task as that step left it."""
        task_id = self.submit(body)
        self.deliver_all()
        return self.task(task_id)

    def deliver_all(self):
        """Deliver what is queued, once each, in order; returns what was delivered."""
        messages = self.queue.take()
        for message in messages:
            self.worker.handle(message)
        return messages

    def task(self, task_id):
        return self.store.tasks[task_id]

    def one_layer_fails(self, error):
        """Run a task whose layers all warm but LAYERS[1], which fails with ``error``; the task."""
        task_id = self.submit()
        self.deliver_all()
        self.nodes.finish()
        self.nodes.finish(LAYERS[1].label, BlobState.FAILED, error)
        self.deliver_all()
        return self.task(task_id)

    def start_fails(self, error="registry answered 503"):
        """Submit a task whose start step meets the registry's transient ``error``; the task's id and
        the start message, for a redelivery or the dead-letter consumer."""
        self.registry.errors.append(TransientFailure(error))
        task_id = self.submit()
        [start] = self.queue.take()
        with pytest.raises(TransientFailure):
            self.worker.handle(start)
        return task_id, start

    def give_up(self, message, receive_count=50):
        return give_up(self.store, message, receive_count=receive_count, clock=self.clock)

    def late_worker(self, task_id):
        """A worker whose reads of the task answer what it is now, as if it read just before
        another delivery of the same step wrote it (two concurrent deliveries)."""
        return Worker(
            _Stale(self.store, task_id), self.queue, self.registry, self.nodes, SETTINGS, clock=self.clock
        )


@pytest.fixture
def world():
    return World()


def test_an_image_goes_running_then_success_when_every_layer_is_warm_on_every_supernode(world):
    task_id = world.submit()
    world.deliver_all()  # start: resolve + dispatch
    task = world.task(task_id)
    assert task.status is TaskStatus.RUNNING
    assert task.dispatched
    assert len(world.nodes.creates) == 6  # 3 layers x 2 supernodes
    assert world.registry.seen_headers[0].reveal() == {"Authorization": "Basic czNjcjN0"}
    [check] = world.queue.sent
    assert (check.message.step, check.message.seq, check.delay_seconds) == (Step.CHECK, 1, 1)
    assert not check.message.headers  # credentials live no longer than the first step

    world.nodes.finish(LAYERS[0].label)
    world.deliver_all()
    assert world.task(task_id).to_api()["layers"] == {"total": 3, "succeeded": 1, "failed": 0, "pending": 2}
    assert world.queue.sent[0].delay_seconds == 2  # the delay grows

    world.nodes.finish()
    world.deliver_all()
    task = world.task(task_id)
    assert task.status is TaskStatus.SUCCESS
    assert task.finished_at is not None
    assert world.queue.sent == []


def test_the_check_delay_doubles_up_to_its_cap(world):
    world.submit()
    world.deliver_all()
    delays = []
    for _ in range(6):
        delays.append(world.queue.sent[0].delay_seconds)
        world.deliver_all()
    assert delays == [1, 2, 4, 8, 8, 8]


def test_a_layer_failed_on_a_supernode_fails_the_task_naming_the_layer_and_reason(world):
    task = world.one_layer_fails("digest mismatch")
    assert task.status is TaskStatus.FAIL
    assert LAYERS[1].digest in (task.message or "")
    assert "digest mismatch" in (task.message or "")
    assert task.to_api()["layers"] == {"total": 3, "succeeded": 2, "failed": 1, "pending": 0}


def test_a_refused_download_says_the_credentials_handed_over_lapsed(world):
    message = world.one_layer_fails("GET http://reg/v2/app/blobs/x answered HTTP 401").message or ""
    assert "answered HTTP 401" in message
    assert "credentials handed over with the blob URLs were refused or had expired" in message


def test_a_failure_naming_a_port_with_401_in_it_is_not_taken_for_a_refused_download(world):
    message = world.one_layer_fails("cannot connect to 127.0.0.1:40151 (task 4019ab)").message or ""
    assert "cannot connect to 127.0.0.1:40151" in message
    assert "credentials" not in message


def test_layers_already_warm_finish_at_once_without_a_check(world):
    world.nodes.warm = {blob.label for blob in LAYERS}
    task_id = world.submit()
    world.deliver_all()
    assert world.task(task_id).status is TaskStatus.SUCCESS
    assert world.queue.sent == []


def test_a_missing_image_fails_with_the_registry_reason(world):
    task = world.run({"type": "image", "url": "h.io/app:missing"})
    assert task.status is TaskStatus.FAIL
    assert "not found" in (task.message or "")
    assert world.nodes.creates == []


def test_a_file_is_resolved_and_preheated_like_a_layer(world):
    url = "https://files.example.com/big.iso?X-Amz-Signature=abc"
    world.registry.files[url] = Blob(url=url, filter=("X-Amz-Signature",))
    task_id = world.submit({"type": "file", "url": url})
    world.deliver_all()
    world.nodes.finish()
    world.deliver_all()
    task = world.task(task_id)
    assert task.status is TaskStatus.SUCCESS
    assert task.blobs[0].label == "https://files.example.com/big.iso"
    assert world.nodes.creates[0][1].filter == ("X-Amz-Signature",)


def test_an_unreachable_supernode_fails_the_task_naming_it():
    world = World()
    world.nodes.down.add("http://sn2:8002")
    task_id = world.submit()
    world.deliver_all()
    world.nodes.finish()
    world.deliver_all()
    task = world.task(task_id)
    assert task.status is TaskStatus.FAIL
    assert "http://sn2:8002" in (task.message or "")


def test_a_transient_registry_failure_is_retried_by_redelivery_and_noted(world):
    task_id, start = world.start_fails()
    assert world.task(task_id).status is TaskStatus.RUNNING
    assert "503" in (world.task(task_id).message or "")
    world.worker.handle(start)  # redelivery
    assert world.task(task_id).dispatched
    assert world.task(task_id).message is None


def test_the_dead_letter_consumer_fails_the_task_with_the_last_error(world):
    _, start = world.start_fails()
    task = world.give_up(start, receive_count=5)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert "after 5 attempts" in (task.message or "")
    assert "503" in (task.message or "")


def test_a_duplicate_start_dispatches_nothing_more_and_starts_no_second_chain(world):
    world.submit()
    [start] = world.queue.take()
    world.worker.handle(start)
    world.worker.handle(start)
    assert len(world.nodes.creates) == 6
    assert len(world.queue.sent) == 1


def test_a_duplicate_check_is_dropped(world):
    task_id = world.submit()
    world.deliver_all()
    [check] = world.queue.take()
    world.worker.handle(check)
    world.worker.handle(check)
    assert len(world.queue.sent) == 1
    assert world.task(task_id).check_seq == 2


def test_a_worker_dying_between_send_and_write_still_leaves_one_chain(world):
    task_id = world.submit()
    world.deliver_all()
    [check] = world.queue.take()
    world.store.fail_next = 0
    original_save = world.store.save
    world.store.save = lambda task, expected_check_seq: (_ for _ in ()).throw(RuntimeError("killed"))
    with pytest.raises(RuntimeError):
        world.worker.handle(check)  # sent check 2, then died before writing
    world.store.save = original_save
    orphan = world.queue.take()
    assert [m.seq for m in orphan] == [2]
    world.worker.handle(orphan[0])  # arrives first: the task is still at 1, so it is dropped
    assert world.queue.sent == []
    world.worker.handle(check)  # the redelivery of check 1 carries on
    assert [s.message.seq for s in world.queue.sent] == [2]
    world.nodes.finish()
    world.deliver_all()
    assert world.task(task_id).status is TaskStatus.SUCCESS


def test_a_task_past_its_deadline_fails_timed_out_naming_what_is_pending(world):
    task_id = world.submit()
    world.deliver_all()
    world.clock.advance(601)
    world.deliver_all()
    task = world.task(task_id)
    assert task.status is TaskStatus.FAIL
    assert (task.message or "").startswith("timed out")
    assert LAYERS[0].digest in (task.message or "")


def test_the_last_check_is_not_scheduled_past_the_deadline():
    world = World()
    world.submit()
    world.deliver_all()
    world.clock.advance(599)
    world.deliver_all()
    assert world.queue.sent[0].delay_seconds <= 2


def test_messages_for_finished_or_vanished_tasks_are_dropped(world):
    task_id = world.submit()
    [start] = world.queue.take()
    del world.store.tasks[task_id]
    assert world.worker.handle(start) is None
    assert world.nodes.creates == []


def test_a_supernode_rejecting_a_blob_marks_it_failed():
    world = World(targets=("http://sn1:8002",))

    def reject(target, blob):
        raise PermanentFailure(f"supernode {target} refused {blob.label}: bad url")

    world.nodes.create = reject
    task = world.run()
    assert task.status is TaskStatus.FAIL
    assert "refused" in (task.message or "")


def test_credentials_are_not_stored_with_the_task(world):
    task_id = world.submit({"type": "image", "url": IMAGE, "header": {"Authorization": "Bearer CANARY-1"}})
    world.deliver_all()
    world.nodes.finish()
    world.deliver_all()
    assert "CANARY-1" not in repr(world.task(task_id))
    assert isinstance(world.registry.seen_headers[0], Credentials)


def test_requested_platforms_reach_the_registry_and_the_status(world):
    task_id = world.submit({"type": "image", "url": IMAGE, "platform": ["linux/arm64"]})
    world.deliver_all()
    assert [str(p) for p in world.registry.seen_platforms[0]] == ["linux/arm64"]
    data = world.task(task_id).to_api()
    assert data["platform"] == ["linux/arm64"]
    assert data["platforms"] == ["linux/arm64"]


def test_the_deployment_default_platforms_apply_when_the_request_names_none():
    world = World()
    world.service = PreheatService(
        world.store, world.queue, Settings(platforms=("linux/amd64",)), clock=world.clock
    )
    world.submit()
    world.deliver_all()
    assert [str(p) for p in world.registry.seen_platforms[0]] == ["linux/amd64"]


class SleepingClock(Clock):
    """A clock whose sleep advances it, so a watch window costs no real time."""

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def watching_world(window: float = 5.0, **settings):
    world = World()
    clock = SleepingClock()
    config = Settings(
        task_timeout_seconds=600, check_window_seconds=window, check_interval_seconds=0.25, **settings
    )
    world.clock = clock
    world.service = PreheatService(world.store, world.queue, config, clock=clock)
    world.worker = Worker(
        world.store, world.queue, world.registry, world.nodes, config, clock=clock, sleep=clock.sleep
    )
    return world


def test_blobs_finishing_soon_conclude_in_the_start_step_with_two_writes():
    world = watching_world()
    # Looks: one FIRST_LOOK_SECONDS after each create, then 0.05, 0.15 and 0.35 s after the last.
    world.nodes.finish_after_polls = 4
    task = world.run()
    assert task.status is TaskStatus.SUCCESS
    assert world.queue.sent == []  # no check message was needed
    assert world.store.writes == 2  # created, finished: the progress never needed recording
    # The test's clock adds up the six sends' pauses, which really run side by side.
    first_looks = 6 * FIRST_LOOK_SECONDS
    assert (task.finished_at - task.created_at).total_seconds() == pytest.approx(first_looks + 0.35)


def test_a_longer_watch_records_the_progress_once_for_callers_to_see():
    world = watching_world()
    world.nodes.finish_after_polls = 6  # the 6th look: 0.85 s into the watch
    seen = []
    original_save = world.store.save

    def save(task, expected_check_seq):
        seen.append((task.status, task.to_api().get("layers")))
        return original_save(task, expected_check_seq)

    world.store.save = save
    task_id = world.submit()
    world.deliver_all()

    assert world.task(task_id).status is TaskStatus.SUCCESS
    # The progress, PROGRESS_AFTER_SECONDS into the watch, then the verdict.
    assert seen == [
        (TaskStatus.RUNNING, {"total": 3, "succeeded": 0, "failed": 0, "pending": 3}),
        (TaskStatus.SUCCESS, {"total": 3, "succeeded": 3, "failed": 0, "pending": 0}),
    ]


def test_looks_stay_quick_while_blobs_keep_finishing_and_back_off_while_none_does():
    world = watching_world()
    sleeps: list[float] = []
    original_sleep = world.clock.sleep

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 3))
        original_sleep(seconds)

    world.worker._sleep = sleep
    polls_before_finishing = {LAYERS[0].label: 2, LAYERS[1].label: 5, LAYERS[2].label: 6}
    original_status = world.nodes.status

    def status(target, supernode_task_id):
        answer = original_status(target, supernode_task_id)
        label = supernode_task_id.removeprefix("id-")
        if world.nodes._polls_of[(target, supernode_task_id)] >= polls_before_finishing[label]:
            world.nodes.finish(label)
            return world.nodes.states[(target, supernode_task_id)]
        return answer

    world.nodes.status = status
    task_id = world.submit()
    world.deliver_all()

    assert world.task(task_id).status is TaskStatus.SUCCESS
    watch = sleeps[6:]  # after the six sends' first-look pauses
    # Look 2: the first layer finishes (quick again); 3 and 4: nothing (doubling); 5 and 6: the others.
    assert watch == [0.05, 0.05, 0.1, 0.2, 0.05]


def test_the_window_never_outlasts_the_invocation_budget():
    world = watching_world()
    world.nodes.finish_after_polls = 100
    world.submit()
    [start] = world.queue.take()
    world.worker.handle(start, time_budget_seconds=1.0)
    assert world.clock.now.timestamp() - Clock().now.timestamp() <= 1.0
    assert [s.message.step for s in world.queue.sent] == [Step.CHECK]


def test_a_check_watches_its_window_and_notices_completion_within_one_interval():
    world = watching_world(window=2.0)
    world.nodes.finish_after_polls = 50
    task_id = world.submit()
    world.deliver_all()  # the start step watched 2 s, then handed over
    assert world.task(task_id).dispatched
    world.nodes.finish_after_polls = None
    world.nodes.finish()
    world.deliver_all()
    assert world.task(task_id).status is TaskStatus.SUCCESS


def test_scope_one_spreads_blobs_evenly_and_stably_over_the_supernodes():
    nodes = ("http://sn1:8002", "http://sn2:8002", "http://sn3:8002")
    blobs = [
        Blob(url=f"https://h.io/v2/app/blobs/sha256:{n:064x}", digest=f"sha256:{n:064x}") for n in range(100)
    ]
    world = World(targets=nodes)
    world.registry.images[IMAGE] = blobs
    settings = Settings(task_timeout_seconds=600, check_window_seconds=0, supernode_scope="one")
    world.worker = Worker(world.store, world.queue, world.registry, world.nodes, settings, clock=world.clock)
    task_id = world.submit()
    world.deliver_all()
    per_node = dict.fromkeys(nodes, 0)
    for target, _ in world.nodes.creates:
        per_node[target] += 1
    assert sum(per_node.values()) == 100  # each blob to exactly one supernode
    assert all(abs(count - 100 / 3) <= 0.2 * 100 / 3 for count in per_node.values()), per_node
    first = {blob.label: blob.target for blob in world.task(task_id).blobs}
    again = World(targets=nodes)
    again.registry.images[IMAGE] = blobs
    again.worker = Worker(again.store, again.queue, again.registry, again.nodes, settings, clock=again.clock)
    again_id = again.submit()
    again.deliver_all()
    assert {blob.label: blob.target for blob in again.task(again_id).blobs} == first


def test_a_worker_dying_after_recording_progress_redoes_the_start_without_double_counting(world):
    task_id = world.submit()
    [start] = world.queue.take()
    original_send = world.queue.send
    world.queue.send = lambda message, delay_seconds=0: (_ for _ in ()).throw(RuntimeError("killed"))
    with pytest.raises(RuntimeError):
        world.worker.handle(start)  # progress recorded, died before the first check was queued
    assert world.task(task_id).to_api()["layers"]["pending"] == 3
    assert not world.task(task_id).dispatched
    world.queue.send = original_send
    world.worker.handle(start)  # redelivery
    assert world.task(task_id).dispatched
    assert len(world.task(task_id).blobs) == 6
    assert len({(t, b.label) for t, b in world.nodes.creates}) == 6
    assert len(world.queue.sent) == 1
    world.nodes.finish()
    world.deliver_all()
    assert world.task(task_id).to_api()["layers"] == {"total": 3, "succeeded": 3, "failed": 0, "pending": 0}


def test_detail_lists_every_blob_on_every_supernode_without_credentials():
    world = World(targets=("http://user:pw@sn1:8002",))
    task_id = world.submit()
    world.deliver_all()
    world.nodes.finish(LAYERS[0].label)
    world.nodes.finish(LAYERS[1].label, BlobState.FAILED, "disk full")
    world.deliver_all()
    detail = world.task(task_id).to_api(detail=True)["blobs"]
    assert detail[0] == {
        "digest": LAYERS[0].digest,
        "supernode": "http://sn1:8002",
        "preheatedUrl": LAYERS[0].url,
        "nodeTaskId": hashlib.sha256(f"node {LAYERS[0].url}".encode()).hexdigest(),
        "state": "SUCCESS",
    }
    assert detail[1]["error"] == "disk full"
    assert detail[2]["state"] == "PENDING"
    assert "blobs" not in world.task(task_id).to_api()


def test_without_supernodes_a_task_fails_instead_of_succeeding_with_nothing_warmed():
    world = World(targets=())
    task = world.run()
    assert task.status is TaskStatus.FAIL
    assert "PREHEAT_SUPERNODES" in (task.message or "")
    assert world.registry.seen_headers == []  # nothing resolved for nothing to warm


class HandingOverRegistry:
    """Hands each blob over as it "resolves", and resolves the next only once the blob handed over
    has reached a supernode (or ``fail_after`` blobs were handed over): a worker that waited for
    the whole resolution before dispatching would never see it finish."""

    def __init__(self, nodes: FakeSupernodes, fail_after: int | None = None, error: Exception | None = None):
        self.nodes, self.fail_after, self.error = nodes, fail_after, error

    def resolve_image(self, image, headers, platforms=(), options=UNBOUNDED):
        on_blob = options.on_blob
        assert on_blob is not None, "the worker must take blobs as they resolve"
        for number, blob in enumerate(LAYERS):
            if number == self.fail_after:
                assert self.error is not None
                raise self.error
            on_blob(blob)
            deadline = time.monotonic() + 5
            while not any(created.label == blob.label for _, created in self.nodes.creates):
                assert time.monotonic() < deadline, f"{blob.label} was not sent while the registry resolved"
                time.sleep(0.002)
        return ImageResolution(list(reversed(LAYERS)))  # the result's order is the one kept

    def resolve_file(self, url, headers, options=UNBOUNDED):
        raise AssertionError("not a file")


def handing_over_world(**registry_options) -> World:
    world = World()
    world.registry = HandingOverRegistry(world.nodes, **registry_options)
    world.worker = Worker(world.store, world.queue, world.registry, world.nodes, SETTINGS, clock=world.clock)
    return world


def test_each_blob_is_sent_to_the_supernodes_while_the_registry_resolves_the_others():
    world = handing_over_world()
    task_id = world.submit()
    world.deliver_all()

    task = world.task(task_id)
    assert task.status is TaskStatus.RUNNING
    assert task.dispatched
    assert len(world.nodes.creates) == 6  # each blob once per supernode, though handed over early
    # Progress lists the blobs in the resolution's order, each on every supernode in turn.
    assert [(blob.label, blob.target) for blob in task.blobs] == [
        (layer.label, node) for layer in reversed(LAYERS) for node in TWO_NODES
    ]
    # Each pending blob was looked at once, right after its create.
    assert world.nodes.polls == 6


def test_blobs_already_done_when_sent_end_the_task_within_the_start_step():
    world = handing_over_world()
    world.nodes.finish_after_polls = 1
    task_id = world.submit()
    world.deliver_all()

    assert world.task(task_id).status is TaskStatus.SUCCESS
    assert world.queue.sent == []  # no check needed


def test_a_resolution_failing_after_some_blobs_were_sent_fails_the_task_with_its_reason():
    world = handing_over_world(fail_after=1, error=PermanentFailure("blob sha256:b of h.io/app:v1 not found"))
    task_id = world.submit()
    world.deliver_all()

    task = world.task(task_id)
    assert task.status is TaskStatus.FAIL
    assert task.message == "blob sha256:b of h.io/app:v1 not found"
    # What was sent before the failure completed (harmless: a supernode joins a repeat), and no
    # send outlived the step.
    assert [blob.label for _, blob in world.nodes.creates] == [LAYERS[0].label] * 2
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("dispatch")]


def test_a_transient_resolution_failure_after_some_blobs_were_sent_is_retried_whole():
    world = handing_over_world(fail_after=2, error=TransientFailure("registry h.io answered HTTP 503"))
    task_id = world.submit()
    [start] = world.queue.take()
    with pytest.raises(TransientFailure):
        world.worker.handle(start)
    assert world.task(task_id).message == "retrying after: registry h.io answered HTTP 503"
    assert not world.task(task_id).dispatched

    world.registry.fail_after = None
    world.worker.handle(start)  # redelivered: everything is sent (again)
    assert world.task(task_id).dispatched
    assert {blob.label for _, blob in world.nodes.creates} == {layer.label for layer in LAYERS}


def test_the_start_step_resolves_within_what_the_invocation_has_left(world):
    world.submit()
    [start] = world.queue.take()
    world.worker.handle(start, time_budget_seconds=42.0)
    [budget] = world.registry.seen_budgets
    assert budget is not None
    assert 0 < budget <= 42.0


# -- retries on a clock that fits the failure -------------------------------------------------------


def test_the_retry_delay_doubles_with_jitter_up_to_its_cap():
    settings = Settings(retry_base_delay_seconds=1.0, retry_max_delay_seconds=60.0)
    lowest = [step_retry_delay(attempt, settings, rand=lambda: 0.0) for attempt in range(1, 10)]
    highest = [step_retry_delay(attempt, settings, rand=lambda: 1.0) for attempt in range(1, 10)]
    assert highest == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert lowest == [delay / 2 for delay in highest]  # half of it is jitter, half is backoff
    assert step_retry_delay(1000, settings) <= 60


def test_the_retry_delay_honours_retry_after_within_the_cap():
    settings = Settings(retry_base_delay_seconds=1.0, retry_max_delay_seconds=60.0)
    assert step_retry_delay(1, settings, retry_after=30, rand=lambda: 0.0) == 30
    assert step_retry_delay(1, settings, retry_after=3600, rand=lambda: 0.0) == 60
    assert step_retry_delay(7, settings, retry_after=1, rand=lambda: 1.0) == 60  # never sooner than backoff


def test_a_task_failing_until_its_deadline_ends_fail_naming_what_it_waited_for_and_the_error(world):
    task_id = world.submit()
    [start] = world.queue.take()
    world.registry.errors.append(TransientFailure("registry h.io answered HTTP 503: UNAVAILABLE"))
    with pytest.raises(TransientFailure) as caught:
        world.worker.handle(start)
    assert caught.value.deadline == world.task(task_id).deadline  # its retry comes no later
    world.clock.advance(601)
    world.worker.handle(start)  # the retry that comes after the deadline
    task = world.task(task_id)
    assert task.status is TaskStatus.FAIL
    message = task.message or ""
    assert message.startswith("timed out: still RUNNING at the deadline")
    assert f"waiting for the registry to resolve {IMAGE}" in message
    assert message.endswith("last error: registry h.io answered HTTP 503: UNAVAILABLE")


def test_a_start_failing_after_handing_some_blobs_over_still_names_the_registry_at_its_deadline():
    # What a failed start step had handed over is recorded for its retry (nothing is created twice),
    # but the task waits for its resolution, not for "its next step".
    now = datetime(2026, 12, 6, tzinfo=UTC)
    sent = BlobProgress(label="sha256:" + "a" * 64, target=TWO_NODES[0], state=BlobState.SUCCESS)
    task = Task(
        task_id="00000000-0000-4000-8000-000000000001",
        type=PreheatType.IMAGE,
        url=IMAGE,
        status=TaskStatus.RUNNING,
        created_at=now,
        deadline=now,
        blobs=(sent,),
        message="retrying after: could not resolve the blob sha256:b: timed out after 1s",
    )

    message = task.timed_out_message()

    assert f"waiting for the registry to resolve {IMAGE} (1 already handed over)" in message
    assert message.endswith("last error: could not resolve the blob sha256:b: timed out after 1s")
    # What it had handed over may have been pending when it failed: it still waits for the registry.
    pending = replace(task, blobs=(replace(sent, state=BlobState.PENDING),))
    expected = f"waiting for the registry to resolve {IMAGE} (1 already handed over)"
    assert expected in pending.timed_out_message()
    # A start step still watching what it sent (no retry under way) waits for the supernodes.
    watching = replace(pending, message=None)
    assert "waiting for the supernodes; still pending: sha256:aaaa" in watching.timed_out_message()


def test_a_check_timing_out_names_the_pending_blobs_and_the_last_failed_look(world):
    task_id = world.submit()
    world.deliver_all()
    world.nodes.down.add(TWO_NODES[1])  # looks at it fail from here on
    world.deliver_all()
    world.clock.advance(601)
    world.deliver_all()
    message = world.task(task_id).message or ""
    assert "still pending: " in message
    assert LAYERS[0].digest in message
    assert f"last error: {LAYERS[0].label} on {TWO_NODES[1]}: could not poll: supernode" in message


def test_the_dead_letter_consumer_names_what_the_task_waited_for(world):
    _, start = world.start_fails()
    task = world.give_up(start, receive_count=50)
    assert task is not None
    assert task.status is TaskStatus.FAIL
    assert task.message == (
        "the worker gave up on its 'start' step after 50 attempts, waiting for the registry to "
        f"resolve {IMAGE}; last error: registry answered 503"
    )


def test_the_dead_letter_consumer_leaves_a_task_whose_step_moved_on_alone(world):
    task_id = world.submit()
    [start] = world.queue.take()
    world.worker.handle(start)  # dispatched: a dead copy of the start is stale
    assert world.give_up(start).status is TaskStatus.RUNNING
    [check] = world.queue.take()
    world.worker.handle(check)  # check 1 sent check 2: a dead check 1 is stale too
    assert world.give_up(check).status is TaskStatus.RUNNING
    [current] = world.queue.take()
    ended = world.give_up(current)
    assert ended is not None
    assert ended.status is TaskStatus.FAIL
    assert "still pending: " in (ended.message or "")
    assert world.task(task_id).status is TaskStatus.FAIL


class _Stale:
    """A store whose reads answer a snapshot: a delivery that read the task just before another
    delivery of the same step wrote it, as two concurrent deliveries do."""

    def __init__(self, store: FakeTaskStore, task_id: str) -> None:
        self._store, self._snapshot = store, store.tasks[task_id]

    def get(self, task_id):
        return self._snapshot

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_concurrent_deliveries_of_one_check_leave_one_chain(world):
    task_id = world.submit()
    world.deliver_all()
    [check] = world.queue.take()
    late = world.late_worker(task_id)
    world.worker.handle(check)
    late.handle(check)  # read the task before the first delivery's write: sends a check, loses the write
    both = world.queue.take()
    assert [m.seq for m in both] == [2, 2]
    assert both[0].chain != both[1].chain
    for message in both:
        world.worker.handle(message)
    assert [s.message.seq for s in world.queue.sent] == [3]  # one chain goes on, the other is dropped
    world.nodes.finish()
    world.deliver_all()
    assert world.task(task_id).status is TaskStatus.SUCCESS


def test_concurrent_deliveries_of_one_start_leave_one_chain(world):
    task_id = world.submit()
    [start] = world.queue.take()
    late = world.late_worker(task_id)
    world.worker.handle(start)
    late.handle(start)  # resolved and sent too, but its progress write lost: it hands over nothing
    [check] = world.queue.take()
    assert check.seq == 1
    world.worker.handle(check)
    assert len(world.queue.sent) == 1
    assert world.task(task_id).dispatched


def test_a_supernode_that_never_answers_costs_the_step_one_round_of_failures():
    world = World(targets=("http://sn1:8002",))
    many = [
        Blob(url=f"https://h.io/v2/app/blobs/sha256:{n:064x}", digest=f"sha256:{n:064x}") for n in range(200)
    ]
    world.registry.images[IMAGE] = many
    attempts = []
    original = world.nodes.create

    def silent(target, blob):
        attempts.append(blob)
        raise TransientFailure(f"supernode {target} did not accept the preheat of {blob.label}: timed out")

    world.nodes.create = silent
    task = world.run()
    assert task.status is TaskStatus.FAIL
    assert "200 of 200 layer(s) failed to preheat" in (task.message or "")
    assert "timed out" in (task.message or "")
    assert len(attempts) < 200  # the rest were not sent once the supernode kept failing
    world.nodes.create = original


def test_sends_still_unanswered_when_the_step_runs_out_of_time_fail_it_for_a_retry(world):
    release = threading.Event()
    original = world.nodes.create

    def stuck(target, blob):
        release.wait(30)
        return original(target, blob)

    world.nodes.create = stuck
    task_id = world.submit()
    [start] = world.queue.take()
    try:
        with pytest.raises(TransientFailure, match="still unanswered when the step's time ran out"):
            world.worker.handle(start, time_budget_seconds=0.0)
    finally:
        release.set()
    assert "still unanswered" in (world.task(task_id).message or "")
    assert not world.task(task_id).dispatched


def test_an_unexpected_error_reading_the_registry_fails_the_task_instead_of_crashing(world):
    world.registry.errors.append(RecursionError("maximum recursion depth exceeded"))
    task = world.run()
    assert task.status is TaskStatus.FAIL
    assert "its server's answer could not be read (RecursionError)" in (task.message or "")


def test_an_unexpected_error_reading_a_supernode_fails_the_blob_instead_of_crashing(world):
    world.nodes.create = lambda target, blob: (_ for _ in ()).throw(
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")
    )
    task = world.run()
    assert task.status is TaskStatus.FAIL
    assert "could not be read (UnicodeDecodeError)" in (task.message or "")


class _SmallItemStore(FakeTaskStore):
    """Refuses progress of more than ``limit`` blob copies on a RUNNING task, and drops the detail
    of an ended one, as the DynamoDB store does with progress that no cut makes fit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def save(self, task, expected_check_seq):
        if len(task.blobs) > self.limit:
            if not task.status.terminal:
                raise ProgressTooLarge(
                    f"the progress of {len(task.blobs)} blob copies is too large", task.blobs
                )
            task = replace(task, blobs=(), layer_counts=LayerCounts.of(task.blobs))
        return super().save(task, expected_check_seq)


def test_progress_too_large_to_record_ends_the_task_fail_with_its_counts_not_in_a_retry_loop():
    world = World()
    world.store = _SmallItemStore(limit=5)  # 3 layers x 2 supernodes = 6 copies
    world.service = PreheatService(world.store, world.queue, SETTINGS, clock=world.clock)
    world.worker = Worker(world.store, world.queue, world.registry, world.nodes, SETTINGS, clock=world.clock)

    task = world.run()

    assert task.status is TaskStatus.FAIL
    assert task.finished_at is not None
    assert task.message == "the progress of 6 blob copies is too large"
    assert task.to_api()["layers"] == {"total": 3, "succeeded": 0, "failed": 0, "pending": 3}
    assert world.queue.sent == []  # ended: no check follows
