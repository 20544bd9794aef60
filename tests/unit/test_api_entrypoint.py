"""The API entry points over fakes: the envelope, and how each domain error is answered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preheat import bootstrap
from preheat.entrypoints.api import build_resolver, check_routes, preheat_routes, status_routes
from preheat.models import TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from tests.support.fakes import FakeQueue, FakeSupernodes, FakeTaskStore
from tests.support.lambda_context import LambdaContext

EVENTS = Path(__file__).resolve().parents[2] / "events"


def call(router: Any, event_file: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / event_file).read_text()) | overrides
    answer = build_resolver(router()).resolve(event, LambdaContext())
    assert answer["statusCode"] == 200
    assert answer["multiValueHeaders"]["Content-Type"] == ["application/json"]
    body: dict[str, Any] = json.loads(answer["body"])
    return body


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    store, queue, nodes = FakeTaskStore(), FakeQueue(), FakeSupernodes(("http://a:8002", "http://b:8002"))
    service = PreheatService(store, queue, Settings(allowed_networks=("127.0.0.0/8", "::1/128")))
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: service)
    monkeypatch.setattr(bootstrap, "supernode_driver", lambda: nodes)
    return store, queue, nodes


def test_check_is_200_when_all_supernodes_answer_and_names_those_that_do_not(fakes):
    _, _, nodes = fakes
    assert call(check_routes, "check.json") == {"code": 200}
    nodes.down.add("http://b:8002")
    answer = call(check_routes, "check.json")
    assert answer["code"] == 503
    assert "http://b:8002: connection refused" in answer["msg"]
    assert "http://a:8002" not in answer["msg"]


def test_preheat_answers_the_task_id_it_recorded(fakes):
    store, queue, _ = fakes
    answer = call(preheat_routes, "preheat-image.json")
    assert answer["code"] == 200
    assert set(answer) == {"code", "data"}
    assert list(store.tasks) == [answer["data"]["taskId"]]
    assert len(queue.sent) == 1


def test_a_store_failure_is_code_500_and_queues_nothing(fakes):
    store, queue, _ = fakes
    store.fail_next = 1
    answer = call(preheat_routes, "preheat-image.json")
    assert answer["code"] == 500
    assert "try again" in answer["msg"]
    assert queue.sent == []


def test_a_queue_failure_is_code_500_and_the_task_is_not_left_running(fakes):
    store, queue, _ = fakes
    queue.fail_next = 1
    answer = call(preheat_routes, "preheat-image.json")
    assert answer["code"] == 500
    [task] = store.tasks.values()
    assert task.status is TaskStatus.FAIL


def test_an_oversized_body_is_refused(fakes):
    store, _, _ = fakes
    body = json.dumps({"type": "file", "url": "https://h.io/f", "header": {"X": "v" * 70_000}})
    answer = call(preheat_routes, "preheat-file.json", body=body)
    assert answer == {"code": 400, "msg": "request body is larger than 64 KiB"}
    assert store.tasks == {}


def test_a_base64_body_is_decoded_as_api_gateway_sends_binary_payloads(fakes):
    import base64

    body = base64.b64encode(b'{"type":"file","url":"https://h.io/f"}').decode()
    answer = call(preheat_routes, "preheat-file.json", body=body, isBase64Encoded=True)
    assert answer["code"] == 200


def test_status_answers_the_spec_fields_first(fakes):
    created = call(preheat_routes, "preheat-image.json")["data"]["taskId"]
    answer = call(
        status_routes,
        "status.json",
        path=f"/api/preheat/{created}",
        pathParameters={"taskId": created},
    )
    assert answer["code"] == 200
    assert answer["data"]["taskId"] == created
    assert answer["data"]["status"] == "RUNNING"
    assert list(answer["data"])[:2] == ["taskId", "status"]


def test_an_unexpected_error_is_code_500_without_details(fakes, monkeypatch: pytest.MonkeyPatch):
    def explode():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(bootstrap, "preheat_service", explode)
    answer = call(preheat_routes, "preheat-image.json")
    assert answer["code"] == 500
    assert "secret internals" not in answer["msg"]


def test_a_body_that_is_not_utf8_is_refused(fakes):
    import base64

    body = base64.b64encode(b'{"type":"file","url":"\xff\xfe"}').decode()
    answer = call(preheat_routes, "preheat-file.json", body=body, isBase64Encoded=True)
    assert answer["code"] == 400
    assert "UTF-8" in answer["msg"]


# Both inside the 64 KiB limit: 30,000 lists deep, and objects 10,000 deep.
@pytest.mark.parametrize("deep", ["[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000])
def test_a_body_nested_deeper_than_the_parser_recurses_is_a_400_saying_so(fakes, deep: str):
    # Given a body nested 30,000 deep (inside the 64 KiB limit), which json.loads cannot recurse into
    store, queue, _ = fakes

    # When it is posted
    answer = call(preheat_routes, "preheat-file.json", body=deep)

    # Then the caller is told why, and nothing is started (it was a 500 "internal error")
    assert answer == {
        "code": 400,
        "msg": "request body is not valid JSON (the JSON document is nested too deeply)",
    }
    assert store.tasks == {}
    assert queue.sent == []
