"""The template's ``EventBusName`` decides where the events go: a stack deployed with a bus of its
own puts them there (and the functions are told so), not on the default bus."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from local.aws import client as local_client
from local.stack import LocalStack

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
    root = tmp_path_factory.mktemp("empty")

    class Empty(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_events_go_to_the_named_bus(stack: LocalStack, nothing_here: str):
    assert stack.environment["PREHEAT_EVENT_BUS"] == BUS
    events = local_client("events", stack.moto_url)
    rules = events.list_rules(EventBusName=BUS)["Rules"]
    assert [json.loads(rule["EventPattern"]) for rule in rules] == [
        {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}
    ]
    assert events.list_rules(EventBusName="default")["Rules"] == []
    # A task that ends at once (its file does not exist: 404 is permanent) is announced on that bus.
    answer = requests.post(
        f"{stack.api_url}/api/preheat",
        json={"type": "file", "url": f"{nothing_here}/none.bin"},
        timeout=10,
    ).json()
    task_id = answer["data"]["taskId"]
    assert stack.events_file is not None
    lines: list[dict[str, Any]] = []
    for _ in range(600):
        lines = [json.loads(line) for line in stack.events_file.read_text(encoding="utf-8").splitlines()]
        if lines:
            break
        time.sleep(0.1)
    assert [(event["detail"]["taskId"], event["detail"]["status"]) for event in lines] == [(task_id, "FAIL")]
