"""The dispatch turns a send's failures into failed blobs, a single blob's and a batch's alike; a
target's rate limit is raised, waited out by retrying the step, never a failed blob."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from preheat.dispatch import Dispatch
from preheat.errors import PermanentFailure, RateLimited, TransientFailure
from preheat.models import Blob, BlobProgress, BlobState, PreheatRequest, TaskStatus
from preheat.ports import SupernodeTask
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore

SETTINGS = Settings(task_timeout_seconds=600, check_window_seconds=0)
IMAGE = "h.io/app:v1"
LAYERS = [Blob(url=f"https://h.io/v2/app/blobs/sha256:{c * 64}", digest=f"sha256:{c * 64}") for c in "abc"]
TARGETS = ("http://manager-1:8080", "http://manager-2:8080")


class BatchNodes(FakeSupernodes):
    """A target that takes two blobs a create; ``refuse`` fails the creates of the targets named."""

    batch_size = 2

    def __init__(self) -> None:
        super().__init__(TARGETS)
        self.refuse: dict[str, Exception] = {}
        self.batches: list[tuple[str, int]] = []

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        self.batches.append((target, len(blobs)))
        if target in self.refuse:
            raise self.refuse[target]
        return super().create_batch(target, blobs)


def run_start(nodes: BatchNodes) -> tuple[FakeTaskStore, str]:
    store, queue, clock = FakeTaskStore(), FakeQueue(), Clock()
    service = PreheatService(store, queue, SETTINGS, clock=clock)
    worker = Worker(store, queue, FakeRegistry(images={IMAGE: LAYERS}), nodes, SETTINGS, clock=clock)
    task_id = service.submit(PreheatRequest.parse({"type": "image", "url": IMAGE})).task_id
    [start] = queue.take()
    worker.handle(start)
    return store, task_id


@pytest.mark.parametrize(
    "failure", [PermanentFailure("job refused: 400"), TransientFailure("manager timed out")]
)
def test_a_batch_whose_create_fails_fails_each_of_its_blobs_with_the_reason(failure: Exception):
    nodes = BatchNodes()
    nodes.refuse["http://manager-2:8080"] = failure

    store, task_id = run_start(nodes)

    task = store.tasks[task_id]
    # Two creates a target: two blobs, then one.
    assert sorted(nodes.batches) == sorted([(target, n) for target in TARGETS for n in (2, 1)])
    failed = [blob for blob in task.blobs if blob.state is BlobState.FAILED]
    assert {(blob.label, blob.target) for blob in failed} == {(layer.label, TARGETS[1]) for layer in LAYERS}
    assert all(blob.error == str(failure) for blob in failed)
    # Each recorded as the dispatch describes a blob: with the URL handed over and the node's task id.
    assert all(blob.url and blob.node_task_id for blob in failed)
    assert {blob.state for blob in task.blobs if blob.target == TARGETS[0]} == {BlobState.PENDING}
    assert task.status is TaskStatus.RUNNING  # the other target's blobs are still on their way


def test_a_batch_rate_limited_is_raised_for_the_step_to_retry_and_fails_no_blob():
    def send_batch(blobs: Sequence[Blob], target: str) -> list[BlobProgress]:
        raise RateLimited("429 from the manager")

    def describe(blob: Blob, target: str) -> BlobProgress:
        return BlobProgress(label=blob.label, target=target)

    with (
        Dispatch(_no_single_sends, send_batch, describe, TARGETS, "all", batch_size=2) as dispatch,
        pytest.raises(RateLimited, match="429"),
    ):
        dispatch.progress(LAYERS, time_left=None)


def test_the_dispatch_itself_turns_a_failed_batch_into_failed_blobs_described_as_recorded():
    def send_batch(blobs: Sequence[Blob], target: str) -> list[BlobProgress]:
        if target == TARGETS[1]:
            raise TransientFailure("manager timed out")
        return [BlobProgress(label=blob.label, target=target, state=BlobState.SUCCESS) for blob in blobs]

    def describe(blob: Blob, target: str) -> BlobProgress:
        return BlobProgress(label=blob.label, target=target, url=f"described {blob.url}")

    with Dispatch(_no_single_sends, send_batch, describe, TARGETS, "all", batch_size=2) as dispatch:
        progress = dispatch.progress(LAYERS, time_left=None)

    assert [(item.label, item.target) for item in progress] == [
        (layer.label, target) for layer in LAYERS for target in TARGETS
    ]
    refused = [item for item in progress if item.target == TARGETS[1]]
    assert {item.state for item in refused} == {BlobState.FAILED}
    assert {item.error for item in refused} == {"manager timed out"}
    assert all(item.url and item.url.startswith("described ") for item in refused)
    assert {item.state for item in progress if item.target == TARGETS[0]} == {BlobState.SUCCESS}


def _no_single_sends(blob: Blob, target: str) -> BlobProgress:
    raise AssertionError("a batch target gets no single sends")
