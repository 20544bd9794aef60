"""The verify and evict routes over fakes: envelope, 404 for unknown tasks, 200 for a repeat DELETE,
501 for a target that cannot evict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preheat import bootstrap
from preheat.entrypoints.api import build_resolver
from preheat.entrypoints.lifecycle import lifecycle_routes
from preheat.errors import NotSupported
from tests.support.lambda_context import LambdaContext
from tests.unit.test_lifecycle import LifeWorld

EVENTS = Path(__file__).resolve().parents[2] / "events"
UNKNOWN = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def call(sample: str, task_id: str) -> dict[str, Any]:
    event = json.loads((EVENTS / sample).read_text())
    suffix = "/peers" if sample == "peers.json" else ""
    event |= {"path": f"/api/preheat/{task_id}{suffix}", "pathParameters": {"taskId": task_id}}
    answer = build_resolver(lifecycle_routes()).resolve(event, LambdaContext())
    assert answer["statusCode"] == 200  # the spec's envelope: errors too
    body: dict[str, Any] = json.loads(answer["body"])
    return body


@pytest.fixture
def life(monkeypatch: pytest.MonkeyPatch) -> LifeWorld:
    world = LifeWorld()
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: world.service)
    monkeypatch.setattr(bootstrap, "lifecycle_service", lambda: world.life)
    return world


def test_peers_answers_the_verification(life: LifeWorld) -> None:
    task_id = life.warm_task()

    body = call("peers.json", task_id)

    assert body["code"] == 200
    assert body["data"]["summary"]["layersWarm"] == 3
    assert body["data"]["pending"] is False
    assert len(body["data"]["blobs"]) == 6


def test_delete_evicts_then_peers_shows_the_blobs_gone_and_a_repeat_changes_nothing(life: LifeWorld) -> None:
    task_id = life.warm_task()

    first = call("evict.json", task_id)
    life.clock.advance(30)
    again = call("evict.json", task_id)
    after = call("peers.json", task_id)

    assert first["code"] == 200
    assert first["data"]["evictedAt"] == "2026-01-01T00:00:00.000Z"
    assert {e["outcome"] for e in first["data"]["evictions"]} == {"evicted"}
    assert again == first
    assert len(life.events.evicted) == 1
    assert after["data"]["summary"] == {"layersWarm": 0, "layersTotal": 3, "peersWithEveryLayer": []}


@pytest.mark.parametrize("sample", ["peers.json", "evict.json"])
def test_an_unknown_task_is_code_404_and_a_malformed_id_400(life: LifeWorld, sample: str) -> None:
    assert call(sample, UNKNOWN)["code"] == 404
    assert call(sample, "not-a-task")["code"] == 400


def test_a_target_that_cannot_evict_answers_501_naming_the_manager_and_stops_nothing(
    life: LifeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = life.submit()
    life.deliver_all()  # RUNNING: a refusal must not stop it for nothing

    def refuse(blobs: Any) -> list[str]:
        raise NotSupported("Dragonfly 2 schedulers cannot evict: configure the Dragonfly 2 manager")

    monkeypatch.setattr(life.nodes, "evict", refuse)
    body = call("evict.json", task_id)

    assert body == {
        "code": 501,
        "msg": "Dragonfly 2 schedulers cannot evict: configure the Dragonfly 2 manager",
    }
    assert life.task(task_id).evicted_at is None
    assert life.task(task_id).status.value == "RUNNING"


def test_the_status_answer_shows_evicted_at(life: LifeWorld) -> None:
    task_id = life.warm_task()
    life.life.evict(life.task(task_id))
    assert life.service.get(task_id).to_api()["evictedAt"] == "2026-01-01T00:00:00.000Z"
