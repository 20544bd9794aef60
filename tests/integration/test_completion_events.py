"""Completion events end to end: the local stack's functions put them on moto's bus with the real
PutEvents call, and the stack's rule delivers them to ``events.jsonl``, one envelope a line."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

CANARY = "Basic ZXZlbnRzLWNhbmFyeS0xMjM0NTY="


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/missing"):
                self.send_error(404)
                return
            body = b"weights" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("events")
    with LocalStack(
        cache_dir=root / "cache", events_file=root / "events.jsonl", visibility_timeout=5
    ) as running:
        yield running


def finished(stack: LocalStack, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{stack.api_url}/api/preheat", json=body, timeout=10).json()
    task_id = answer["data"]["taskId"]
    for _ in range(600):
        data: dict[str, Any] = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()[
            "data"
        ]
        if data["status"] != "RUNNING":
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never ended")


def event_of(path: Path, task_id: str) -> list[dict[str, Any]]:
    """The lines of ``path`` about ``task_id``, once there is one (the rule delivers asynchronously)."""
    for _ in range(300):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        mine = [event for event in lines if event["detail"]["taskId"] == task_id]
        if mine:
            return mine
        time.sleep(0.05)
    raise AssertionError(f"no event for {task_id} in {path}")


def test_a_finished_task_appears_in_the_event_file_in_eventbridges_envelope(stack, files):
    data = finished(stack, {"type": "file", "url": f"{files}/model.bin", "header": {"Authorization": CANARY}})
    assert data["status"] == "SUCCESS"
    assert stack.events_file is not None
    [event] = event_of(stack.events_file, data["taskId"])
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
    data = finished(stack, {"type": "file", "url": f"{files}/missing.bin"})
    assert data["status"] == "FAIL"
    assert stack.events_file is not None
    [event] = event_of(stack.events_file, data["taskId"])
    assert event["detail"]["status"] == "FAIL"
    assert event["detail"]["msg"] == data["msg"]
