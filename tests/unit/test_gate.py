"""The rollout gate answers with HTTP status: 412 while the content is not warm on the peers, 200
once it is, 412 again when a blob is deleted behind the service's back; 404 and 400 for unknown tasks
and bad ``minPeers``. Through the route (the gate function's resolver), over the keep-warm tests'
world: the reference supernode, the Dragonfly 1 driver, moto's table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from preheat import bootstrap
from preheat.entrypoints.gate import build_resolver, gate_routes
from preheat.gate import Gate
from preheat.models import PreheatRequest
from tests.support.lambda_context import LambdaContext
from tests.unit import test_keep_warm
from tests.unit.test_keep_warm import FILE_URL, LOOKS, World

world = test_keep_warm.world  # the keep-warm tests' fixture

EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "gate.json").read_text())

pytestmark = pytest.mark.timeout(60)


def gate(task_id: str, min_peers: str | None = None, post: bool = False) -> tuple[int, dict[str, Any]]:
    query = {"minPeers": min_peers} if min_peers is not None else None
    event = EVENT | {
        "httpMethod": "POST" if post else "GET",
        # What Flagger's webhooks send (ignored).
        "body": json.dumps({"name": "app", "namespace": "team", "phase": "Progressing"}) if post else None,
        "path": f"/api/preheat/{task_id}/gate",
        "pathParameters": {"taskId": task_id},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
    }
    answer = build_resolver(gate_routes()).resolve(event, LambdaContext())
    assert answer["multiValueHeaders"]["Content-Type"] == ["application/json"]
    return answer["statusCode"], json.loads(answer["body"])


@pytest.fixture
def gated(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr(bootstrap, "gate", lambda: Gate(world.service, world.lifecycle))
    return world


def test_the_gate_is_412_until_the_content_is_warm_then_200_then_412_when_a_blob_goes(gated: World):
    running = gated.service.submit(PreheatRequest.parse({"type": "file", "url": FILE_URL})).task_id
    status, body = gate(running)
    assert status == 412
    assert body == {
        "ready": False,
        "reason": "the preheat task is not SUCCESS: it is still RUNNING",
        "taskId": running,
        "status": "RUNNING",
    }

    for _ in range(LOOKS):
        for message in gated.queue.take():
            gated.worker.handle(message)
        if gated.task(running).status.value != "RUNNING":
            break
        time.sleep(0.01)
    task_id = running
    status, body = gate(task_id)
    assert status == 200, body
    assert body["ready"] is True
    assert (body["layersWarm"], body["layersTotal"]) == (1, 1)
    assert body["peersWithEveryLayer"] == [gated.node.url.removeprefix("http://")]
    # Flagger's webhooks POST: the same answer.
    assert gate(task_id, post=True) == (status, body)
    # One supernode holds it: one peer is enough, two are not.
    assert gate(task_id, "1")[0] == 200
    status, body = gate(task_id, "2")
    assert status == 412
    assert body["minPeers"] == 2

    gated.delete_behind_the_services_back(task_id)
    status, body = gate(task_id)
    assert status == 412
    assert body["reason"] == "0 of 1 layer(s) are warm on the peers the task's scope asks for"
    assert gate(task_id, post=True)[0] == 412


@pytest.mark.parametrize(
    ("task_id", "min_peers", "expected"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", None, 404),
        ("not-a-task-id", None, 400),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "0", 400),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "-1", 400),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "two", 400),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "10001", 400),
    ],
)
def test_unknown_tasks_are_404_and_bad_input_400(
    gated: World, task_id: str, min_peers: str | None, expected: int
):
    status, body = gate(task_id, min_peers)
    assert status == expected
    assert body["ready"] is False
    assert body["reason"]
