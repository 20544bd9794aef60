"""AWS calls per task do not grow with the number of layers: counted with botocore's event hooks
on the clients the project's own code builds (the local SQS poller, standing in for Lambda's event
source mapping, uses clients of its own and is not counted).

A watch that lasts records the blobs' progress for callers to see (after half a second, then as the
counts change): how many such writes a task makes depends on how long its supernode takes, not on
its layers, so they are counted apart (``progress``) and only bounded. A task's calls are complete
once its completion event was put, the last thing its worker does: the test waits for that call,
not for a while."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from preheat.adapters import aws
from testing.completion_events import CompletionEvents
from tests.support.registry import RegistryServer, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


class CallCounter:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.completion_events = CompletionEvents()
        self._lock = threading.Lock()

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        name = f"{model.service_model.service_name}:{model.name}"
        if name == "dynamodb:UpdateItem" and _is_progress(params):
            name = "dynamodb:UpdateItem (progress)"
        with self._lock:
            self.calls[name] += 1

    def take(self) -> collections.Counter[str]:
        with self._lock:
            taken, self.calls = self.calls, collections.Counter()
        return taken


def _is_progress(params: dict[str, Any]) -> bool:
    """A write that keeps the task RUNNING and its check sequence where it was: the blobs' progress."""
    values = params.get("ExpressionAttributeValues", {})
    return values.get(":status") == {"S": "RUNNING"} and values.get(":seq") == values.get(":expected")


@pytest.fixture(scope="module")
def counted_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, CallCounter]]:
    counter = CallCounter()
    with LocalStack(cache_dir=tmp_path_factory.mktemp("cache")) as stack:
        # Hooked once the stack has started: starting it resets the session, as a new execution
        # environment would. Every client the adapters build comes from it.
        session = aws.session()
        session.register("before-parameter-build", counter)
        counter.completion_events.register(session)
        try:
            yield stack, counter
        finally:
            session.unregister("before-parameter-build", counter)
            counter.completion_events.unregister(session)


def preheat_and_wait(stack: LocalStack, counter: CallCounter, url: str) -> str:
    answer = requests.post(
        f"{stack.api_url}/api/preheat", json={"type": "image", "url": url}, timeout=10
    ).json()
    task_id: str = answer["data"]["taskId"]
    # The outcome as its completion event told it: status reads are the caller's, not the task's.
    return counter.completion_events.wait(task_id)


def test_a_100_layer_image_costs_the_same_aws_calls_as_a_1_layer_image(
    counted_stack: tuple[LocalStack, CallCounter],
    registry: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
):
    stack, counter = counted_stack
    small = make_oci_layout(tmp_path_factory.mktemp("one"), [b"only layer\n"])
    big = make_oci_layout(tmp_path_factory.mktemp("hundred"), [f"layer {n}\n".encode() for n in range(100)])
    registry.push(small, "calls/one:v1")
    registry.push(big, "calls/hundred:v1")

    counts = {}
    for name in ("one", "hundred"):
        counter.take()
        assert preheat_and_wait(stack, counter, f"{registry.host}/calls/{name}:v1") == "SUCCESS"
        counts[name] = counter.take()
    print(f"\nAWS calls per task: 1 layer {dict(counts['one'])}, 100 layers {dict(counts['hundred'])}")
    progress = {name: counted.pop("dynamodb:UpdateItem (progress)", 0) for name, counted in counts.items()}
    assert counts["one"] == counts["hundred"]
    assert sum(counts["hundred"].values()) <= 10
    # One per watch that lasted, and then one per change of counts, at most every few seconds.
    assert progress["hundred"] <= 3
