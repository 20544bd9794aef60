"""The watch that notices a task's end within a second however long its blobs take, on a fake clock
(its sleep advances it, so minutes of watching cost no real time), and the completion events."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from preheat.errors import DependencyFailure
from preheat.models import BlobState, PreheatRequest, Step, TaskStatus, WorkerMessage
from preheat.ports import SupernodeTask
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import QUICK_WATCH_SECONDS, Worker, give_up
from tests.support.fakes import Clock, FakeEvents, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore

FILE = "https://files.example.com/model.bin"
CANARY = "Basic Y2FuYXJ5LWNyZWRlbnRpYWwtNzc3"
# What the worker's SQS entry point gives a step: the worker's 120 s timeout less the hand-over margin.
BUDGET = 105.0
# An SQS hand-over between two steps in the fake world.
HANDOVER = 0.3


class SleepingClock(Clock):
    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.advance(seconds)


class TimedSupernodes(FakeSupernodes):
    """Supernodes whose blobs finish at a time of the clock (``finish_at``), as real downloads do."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.finish_at: dict[str, datetime] = {}
        self.looks: list[datetime] = []

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        self.looks.append(self.clock())
        label = supernode_task_id.removeprefix("id-")
        when = self.finish_at.get(label)
        if when is not None and self.clock() >= when:
            self.finish(label)
        return super().status(target, supernode_task_id)


class World:
    def __init__(self, **settings: object) -> None:
        self.clock = SleepingClock()
        defaults: dict[str, object] = {
            "task_timeout_seconds": 1800,
            "check_window_seconds": 90,
            "check_interval_seconds": 0.25,
            "watch_interval_seconds": 0.5,
        }
        config = Settings(**{**defaults, **settings})  # type: ignore[arg-type]
        self.store, self.queue, self.events = FakeTaskStore(), FakeQueue(), FakeEvents()
        self.registry = FakeRegistry()
        self.nodes = TimedSupernodes(self.clock)
        self.service = PreheatService(self.store, self.queue, config, clock=self.clock, events=self.events)
        self.worker = Worker(
            self.store,
            self.queue,
            self.registry,
            self.nodes,
            config,
            clock=self.clock,
            sleep=self.clock.sleep,
            events=self.events,
        )

    def submit(self, url: str = FILE) -> str:
        request = {"type": "file", "url": url, "header": {"Authorization": CANARY}}
        return self.service.submit(PreheatRequest.parse(request)).task_id

    def run_until_idle(self, limit: int = 50) -> list[int]:
        """Deliver every message as SQS would (after its delay plus a hand-over), each step with the
        invocation's budget; returns the delays the messages asked for."""
        delays = []
        for _ in range(limit):
            if not self.queue.sent:
                return delays
            sent = self.queue.sent.pop(0)
            delays.append(sent.delay_seconds)
            self.clock.advance(sent.delay_seconds + HANDOVER)
            self.worker.handle(sent.message, time_budget_seconds=BUDGET)
        raise AssertionError("the check chain never ended")


def notice_after(world: World, task_id: str, finishes_in: float) -> float:
    """Seconds between the blob's finish and the verdict on record."""
    task = world.store.tasks[task_id]
    assert task.status is TaskStatus.SUCCESS, task.message
    finished = task.created_at + timedelta(seconds=HANDOVER + finishes_in)
    return (task.finished_at - finished).total_seconds()


@pytest.mark.parametrize("finishes_in", [3, 40, 180, 600])
def test_a_blob_is_noticed_within_one_watch_interval_however_long_it_takes(finishes_in):
    world = World()
    task_id = world.submit()
    world.nodes.finish_at[FILE] = world.clock() + timedelta(seconds=HANDOVER + finishes_in)
    delays = world.run_until_idle()
    notice = notice_after(world, task_id, finishes_in)
    assert 0 <= notice <= 0.5 + 1e-6
    # The start step, then a check chain handed on at once: no delay, so no blind spot.
    assert delays[0] == 0
    assert all(delay == 0 for delay in delays)
    # One chain of checks: each step watches (nearly) its whole window before handing over.
    assert len(delays) == 1 + int((finishes_in + 1) // 90)


def test_looks_come_every_quarter_second_at_first_then_every_half_second():
    world = World()
    world.submit()
    world.nodes.finish_at[FILE] = world.clock() + timedelta(seconds=60)
    world.run_until_idle()
    looks = world.nodes.looks
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(looks)]
    start = looks[0]
    late = [gap for at, gap in zip(looks[1:], gaps, strict=False) if (at - start).total_seconds() > 7]
    assert max(gaps) == pytest.approx(0.5)
    assert all(gap == pytest.approx(0.5) for gap in late)
    early = [gap for at, gap in zip(looks[1:], gaps, strict=False) if (at - start).total_seconds() < 4]
    assert max(early) <= 0.25 + 1e-9
    # About 2 looks a second over a minute: 20 in the first 5 s, then 2 per second.
    assert len(looks) <= 5 / 0.25 + (60 - QUICK_WATCH_SECONDS) / 0.5 + 10


def test_a_window_of_zero_hands_every_wait_to_delayed_checks_as_before():
    world = World(check_window_seconds=0, poll_initial_delay_seconds=1, poll_max_delay_seconds=8)
    world.submit()
    world.nodes.finish_at[FILE] = world.clock() + timedelta(seconds=20)
    delays = world.run_until_idle()
    assert delays[:5] == [0, 1, 2, 4, 8]


def test_the_deadline_ends_the_watch_at_the_deadline_and_is_announced_once():
    world = World(task_timeout_seconds=60)
    task_id = world.submit()
    world.run_until_idle()  # the blob never finishes
    task = world.store.tasks[task_id]
    assert task.status is TaskStatus.FAIL
    assert task.message.startswith("timed out")
    assert task.finished_at == task.deadline
    assert [t.task_id for t in world.events.finished] == [task_id]
    assert world.events.finished[0].status is TaskStatus.FAIL


def test_a_long_watch_records_progress_when_counts_change_at_most_every_five_seconds():
    world = World()
    world.registry.images["h.io/app:v1"] = [replace_blob(n) for n in range(3)]
    task_id = world.service.submit(PreheatRequest.parse({"type": "image", "url": "h.io/app:v1"})).task_id
    start = world.clock()
    for n, seconds in enumerate((20, 21, 40)):
        world.nodes.finish_at[replace_blob(n).label] = start + timedelta(seconds=seconds)
    recorded = []
    save = world.store.save

    def recording_save(task, expected_check_seq):
        recorded.append(
            ((world.clock() - start).total_seconds(), task.to_api().get("layers", {}).get("succeeded"))
        )
        return save(task, expected_check_seq)

    world.store.save = recording_save
    world.run_until_idle()
    assert world.store.tasks[task_id].status is TaskStatus.SUCCESS
    succeeded = [count for _, count in recorded]
    # Progress at 0.5 s (none warm), when the first finishes (20 s), 5 s later (the second, done at
    # 21 s, waited for it), then the verdict.
    assert succeeded == [0, 1, 2, 3]
    assert recorded[1][0] == pytest.approx(20.3, abs=0.6)
    assert recorded[2][0] == pytest.approx(25.3, abs=0.6)


def replace_blob(n: int):
    from preheat.models import Blob

    digest = f"sha256:{n:064x}"
    return Blob(url=f"https://h.io/v2/app/blobs/{digest}", digest=digest)


# -- completion events -------------------------------------------------------------------------


def test_every_end_is_announced_once_with_its_task_and_never_a_header_value():
    world = World()
    task_id = world.submit()
    world.nodes.finish_at[FILE] = world.clock() + timedelta(seconds=2)
    world.run_until_idle()
    [announced] = world.events.finished
    assert announced.task_id == task_id
    assert announced.status is TaskStatus.SUCCESS
    from preheat.events import finished_detail

    detail = finished_detail(announced)
    assert set(detail) == {
        "taskId",
        "status",
        "type",
        "url",
        "platforms",
        "layers",
        "startTime",
        "finishTime",
    }
    assert detail["layers"] == {"total": 1, "succeeded": 1, "failed": 0, "pending": 0}
    assert "Y2FuYXJ5" not in repr(detail)
    assert "Y2FuYXJ5" not in repr(announced)


def test_an_event_that_cannot_be_put_fails_the_step_and_its_redelivery_announces_it():
    world = World()
    task_id = world.submit()
    world.nodes.finish_at[FILE] = world.clock()
    [start] = world.queue.take()
    world.events.fail_next = 1
    with pytest.raises(DependencyFailure):
        world.worker.handle(start, time_budget_seconds=BUDGET)
    assert world.store.tasks[task_id].status is TaskStatus.SUCCESS  # the verdict stands
    assert world.events.finished == []
    world.worker.handle(start, time_budget_seconds=BUDGET)  # SQS delivers it again
    assert [t.task_id for t in world.events.finished] == [task_id]


def test_a_failed_blob_is_announced_as_fail_with_its_message():
    world = World()
    task_id = world.submit()
    [start] = world.queue.take()
    world.worker.handle(start, time_budget_seconds=1.0)  # hands over to a check
    world.nodes.finish(FILE, BlobState.FAILED, "disk full")
    world.run_until_idle()
    [announced] = world.events.finished
    from preheat.events import finished_detail

    detail = finished_detail(announced)
    assert (detail["taskId"], detail["status"]) == (task_id, "FAIL")
    assert "disk full" in detail["msg"]


def test_the_dead_letter_end_is_announced_and_announced_again_when_redelivered():
    world = World()
    task_id = world.submit()
    message = WorkerMessage(task_id, Step.START)
    ended = give_up(world.store, message, 5, clock=world.clock, events=world.events)
    assert ended.status is TaskStatus.FAIL
    give_up(world.store, message, 6, clock=world.clock, events=world.events)
    assert [t.task_id for t in world.events.finished] == [task_id, task_id]
    world.events.fail_next = 1
    with pytest.raises(DependencyFailure):
        give_up(world.store, message, 7, clock=world.clock, events=world.events)


def test_a_task_read_past_its_deadline_is_announced_and_a_failed_put_still_answers():
    world = World(task_timeout_seconds=60)
    first, second = world.submit(), world.submit("https://files.example.com/other.bin")
    world.clock.advance(61)
    assert world.service.get(first).status is TaskStatus.FAIL
    world.events.fail_next = 1
    assert world.service.get(second).status is TaskStatus.FAIL  # answered although the put failed
    assert [t.task_id for t in world.events.finished] == [first]
    # The check chain still on its way for the second task announces it when it arrives.
    world.worker.handle(WorkerMessage(second, Step.CHECK, seq=0))
    assert [t.task_id for t in world.events.finished] == [first, second]


def test_a_task_whose_message_could_not_be_queued_is_announced():
    world = World()
    world.queue.fail_next = 1
    with pytest.raises(DependencyFailure):
        world.submit()
    [announced] = world.events.finished
    assert announced.status is TaskStatus.FAIL
    assert announced.message.startswith("could not queue")


def test_a_check_arriving_before_its_sender_recorded_it_waits_for_that_write():
    """The watch hands over with no delay, so the next check may be received before the write
    that follows its send; it must wait for that write, not drop itself as stale (the chain would
    end with the task RUNNING)."""
    world = World()
    task_id = world.submit()
    world.nodes.finish_at[FILE] = world.clock() + timedelta(seconds=150)
    [start] = world.queue.take()
    original_save = world.store.save
    held: list[tuple[object, int]] = []

    def late_save(task, expected_check_seq):
        if task.check_seq == expected_check_seq + 1 and not held:
            held.append((task, expected_check_seq))  # the sender is "between send and write"
            return True
        return original_save(task, expected_check_seq)

    world.store.save = late_save
    world.worker.handle(start, time_budget_seconds=BUDGET)
    [check] = world.queue.take()
    assert world.store.tasks[task_id].check_seq == 0  # not recorded yet
    original_get = world.store.get
    gets = []

    def get(task_id):
        gets.append(task_id)
        if len(gets) == 3:  # the write lands while the check waits
            world.store.save = original_save
            original_save(*held[0])
        return original_get(task_id)

    world.store.get = get
    world.worker.handle(check, time_budget_seconds=BUDGET)
    assert world.store.tasks[task_id].status is TaskStatus.SUCCESS


def test_a_check_whose_sender_died_before_recording_it_is_dropped_after_a_moment():
    world = World()
    task_id = world.submit()
    world.store.tasks[task_id] = replace(world.store.tasks[task_id], dispatched=True, check_seq=3)
    world.queue.take()
    world.worker.handle(WorkerMessage(task_id, Step.CHECK, seq=4), time_budget_seconds=BUDGET)
    assert world.queue.sent == []  # dropped: the sender's own message, redelivered, sends again
    assert world.store.tasks[task_id].check_seq == 3
