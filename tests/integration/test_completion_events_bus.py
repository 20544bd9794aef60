"""The template's ``EventBusName`` decides where the events go: a stack deployed with a bus of its
own puts them there (and the functions are told so), not on the default bus."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from local.aws import client as local_client
from local.stack import LocalStack
from tests.support.http_server import serve_directory
from tests.support.local_stack import submit, wait_for_events

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

BUS = "platform-events"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("bus")
    with LocalStack(
        cache_dir=root / "cache", events_file=root / "events.jsonl", parameters={"EventBusName": BUS}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def nothing_here(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A file server that has no files: a preheat of one ends FAIL at once (404 is permanent)."""
    with serve_directory(tmp_path_factory.mktemp("empty")) as server:
        yield server.url


def test_events_go_to_the_named_bus(stack: LocalStack, nothing_here: str):
    assert stack.environment["PREHEAT_EVENT_BUS"] == BUS
    events = local_client("events", stack.moto_url)
    rules = events.list_rules(EventBusName=BUS)["Rules"]
    assert [json.loads(rule["EventPattern"]) for rule in rules] == [
        {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}
    ]
    assert events.list_rules(EventBusName="default")["Rules"] == []
    # A task that ends at once (its file does not exist: 404 is permanent) is announced on that bus.
    task_id = submit(stack, {"type": "file", "url": f"{nothing_here}/none.bin"})
    events = wait_for_events(stack, bool, timeout=60)
    assert [(event["detail"]["taskId"], event["detail"]["status"]) for event in events] == [(task_id, "FAIL")]
