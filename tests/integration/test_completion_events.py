"""Completion events end to end: the local stack's functions put them on moto's bus with the real
PutEvents call, and the stack's rule delivers them to ``events.jsonl``, one envelope a line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local.stack import LocalStack
from tests.support.http_server import QuietHandler, serve
from tests.support.local_stack import events_of, preheated

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

CANARY = "Basic ZXZlbnRzLWNhbmFyeS0xMjM0NTY="


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    class Files(QuietHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/missing"):
                self.send_error(404)
                return
            self.answer(b"weights" * 1000)

    with serve(Files) as server:
        yield server.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("events")
    with LocalStack(
        cache_dir=root / "cache", events_file=root / "events.jsonl", visibility_timeout=5
    ) as running:
        yield running


def test_a_finished_task_appears_in_the_event_file_in_eventbridges_envelope(stack, files):
    body = {"type": "file", "url": f"{files}/model.bin", "header": {"Authorization": CANARY}}
    data = preheated(stack, body)
    assert data["status"] == "SUCCESS"
    assert stack.events_file is not None
    [event] = events_of(stack, data["taskId"])
    assert set(event) == {
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    }
    assert (event["source"], event["detail-type"]) == ("preheat", "Preheat Task Finished")
    detail = event["detail"]
    assert detail == {
        "taskId": data["taskId"],
        "status": "SUCCESS",
        "type": "file",
        "url": f"{files}/model.bin",
        "platforms": [],
        "layers": {"total": 1, "succeeded": 1, "failed": 0, "pending": 0},
        "startTime": data["startTime"],
        "finishTime": data["finishTime"],
    }
    text = stack.events_file.read_text(encoding="utf-8")
    assert CANARY not in text
    assert CANARY.split()[1] not in text


def test_a_failed_task_is_announced_with_its_message(stack, files):
    data = preheated(stack, {"type": "file", "url": f"{files}/missing.bin"})
    assert data["status"] == "FAIL"
    assert stack.events_file is not None
    [event] = events_of(stack, data["taskId"])
    assert event["detail"]["status"] == "FAIL"
    assert event["detail"]["msg"] == data["msg"]
