"""Harbor's two provider APIs over fakes: status mapping, job ids and their aliases, error codes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from preheat import bootstrap
from preheat.entrypoints.harbor import (
    build_dragonfly1_resolver,
    build_dragonfly2_resolver,
    dragonfly1_answer,
    dragonfly2_job,
)
from preheat.models import BlobProgress, BlobState, TaskStatus, utcnow
from preheat.service import JOB_ALIAS_PREFIX, PreheatService, job_id_candidates
from preheat.settings import Settings
from tests.support.fakes import FakeQueue, FakeTaskStore
from tests.support.lambda_context import LambdaContext

EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeTaskStore:
    store = FakeTaskStore()
    service = PreheatService(store, FakeQueue(), Settings(allowed_networks=("127.0.0.0/8", "::1/128")))
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: service)
    monkeypatch.setattr(bootstrap, "task_store", lambda: store)
    return store


def call(api: int, event_file: str, **overrides: Any) -> tuple[int, Any]:
    event = json.loads((EVENTS / event_file).read_text()) | overrides
    resolver = build_dragonfly1_resolver() if api == 1 else build_dragonfly2_resolver()
    answer = resolver.resolve(event, LambdaContext())
    body = answer["body"]
    return answer["statusCode"], body if body == "OK" else json.loads(body)


def test_dragonfly1_create_then_status_walks_waiting_running_success(store: FakeTaskStore):
    status, created = call(1, "harbor-dragonfly1-preheat.json")
    assert status == 201
    task_id = created["ID"]
    path = {"path": f"/preheats/{task_id}", "pathParameters": {"id": task_id}}
    assert call(1, "harbor-dragonfly1-status.json", **path)[1]["status"] == "WAITING"
    store.tasks[task_id] = replace(store.tasks[task_id], dispatched=True)
    assert call(1, "harbor-dragonfly1-status.json", **path)[1]["status"] == "RUNNING"
    store.tasks[task_id] = replace(store.tasks[task_id], status=TaskStatus.SUCCESS, finished_at=utcnow())
    status, answer = call(1, "harbor-dragonfly1-status.json", **path)
    assert status == 200
    assert answer["status"] == "SUCCESS"
    assert answer["finishTime"].endswith("Z")
    assert answer["errorMsg"] == ""


def test_dragonfly1_a_failed_task_is_failed_with_its_message(store: FakeTaskStore):
    task_id = call(1, "harbor-dragonfly1-preheat.json")[1]["ID"]
    store.tasks[task_id] = replace(
        store.tasks[task_id], status=TaskStatus.FAIL, finished_at=utcnow(), message="manifest not found"
    )
    answer = dragonfly1_answer(store.tasks[task_id])
    assert (answer["status"], answer["errorMsg"]) == ("FAILED", "manifest not found")


def test_dragonfly1_maps_harbor_headers_to_the_request_credentials(store: FakeTaskStore):
    call(1, "harbor-dragonfly1-preheat.json")
    (task,) = store.tasks.values()
    assert task.url == "http://127.0.0.1:5001/v2/demo/app/manifests/v1"


def test_dragonfly2_job_ids_are_aliases_recorded_with_the_task(store: FakeTaskStore):
    status, job = call(2, "harbor-dragonfly2-job.json")
    assert status == 200
    assert type(job["id"]) is int
    assert job["id"] == job_id_candidates(job["task_id"])[0]
    assert store.aliases == {f"{JOB_ALIAS_PREFIX}{job['id']}": job["task_id"]}
    assert "example-pull-token" not in json.dumps(job)
    path = {"path": f"/oapi/v1/jobs/{job['id']}", "pathParameters": {"id": str(job["id"])}}
    status, again = call(2, "harbor-dragonfly2-job-status.json", **path)
    assert (status, again["id"], again["state"]) == (200, job["id"], "PENDING")


def test_dragonfly2_a_taken_job_id_falls_back_to_the_second_candidate(
    store: FakeTaskStore, monkeypatch: pytest.MonkeyPatch
):
    fixed = "01234567-89ab-4cde-8f01-23456789abcd"
    store.aliases[f"{JOB_ALIAS_PREFIX}{job_id_candidates(fixed)[0]}"] = "someone-else"
    service = bootstrap.preheat_service()
    monkeypatch.setattr(service, "_new_id", lambda: fixed)
    job = call(2, "harbor-dragonfly2-job.json")[1]
    assert job["id"] == job_id_candidates(fixed)[1]


def test_dragonfly2_result_lists_every_blob_like_the_manager(store: FakeTaskStore):
    task_id = call(2, "harbor-dragonfly2-job.json")[1]["task_id"]
    digest = "sha256:" + "b" * 64
    task = replace(
        store.tasks[task_id],
        status=TaskStatus.SUCCESS,
        finished_at=utcnow(),
        blobs=(
            BlobProgress(
                digest, "http://10.0.0.5:8002", BlobState.SUCCESS, digest=digest, supernode_task_id="t1"
            ),
            BlobProgress(digest, "http://sn.example:8002", BlobState.FAILED, digest=digest, error="refused"),
        ),
    )
    job = dragonfly2_job(task, 7)
    (state,) = job["result"]["job_states"]
    (result,) = state["results"]
    (ok,) = result["success_tasks"]
    assert ok == {
        "task_id": "t1",
        "url": f"http://127.0.0.1:5001/v2/demo/app/blobs/{digest}",
        "hostname": "10.0.0.5",
        "ip": "10.0.0.5",
    }
    (bad,) = result["failure_tasks"]
    assert (bad["hostname"], bad["ip"], bad["description"]) == ("sn.example", "", "refused")
    assert job["state"] == state["state"] == "SUCCESS"


@pytest.mark.parametrize("job_id", ["0", "12", "abc", str(2**52)])
def test_dragonfly2_unknown_job_ids_are_404(store: FakeTaskStore, job_id: str):
    path = {"path": f"/oapi/v1/jobs/{job_id}", "pathParameters": {"id": job_id}}
    status, answer = call(2, "harbor-dragonfly2-job-status.json", **path)
    assert status == 404
    assert answer == {"message": "record not found"}


def test_a_store_failure_is_a_500_with_a_message(store: FakeTaskStore):
    store.fail_next = 1
    status, answer = call(2, "harbor-dragonfly2-job.json")
    assert status == 500
    assert "try again" in answer["message"]
    store.fail_next = 1
    status, answer = call(1, "harbor-dragonfly1-preheat.json")
    assert (status, answer["code"]) == (500, 500)


def test_health_routes_answer_ok(store: FakeTaskStore):
    assert call(1, "harbor-dragonfly1-ping.json") == (200, "OK")
    assert call(2, "harbor-dragonfly2-healthy.json") == (200, "OK")


def test_the_openapi_document_has_the_harbor_routes():
    """docs/openapi.yaml documents the Harbor routes the template serves, validly."""
    import yaml
    from openapi_spec_validator import validate

    from local.template import Template

    root = EVENTS.parent
    document = yaml.safe_load((root / "docs" / "openapi.yaml").read_text())
    validate(document)
    template = Template.load(root / "template.yaml")
    harbor_routes = {
        (event.path, event.method.lower())
        for name in ("HarborDragonfly1Function", "HarborDragonfly2Function")
        for event in template.functions[name].api_events
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert harbor_routes <= documented


@pytest.mark.parametrize(
    ("api", "event_file"), [(1, "harbor-dragonfly1-preheat.json"), (2, "harbor-dragonfly2-job.json")]
)
def test_a_body_nested_30000_deep_is_a_400_saying_so(store: FakeTaskStore, api: int, event_file: str):
    # Given a body nested deeper than json.loads recurses, well inside the 64 KiB limit
    deep = "[" * 30_000 + "]" * 30_000

    # When Harbor posts it to either provider API
    status, answer = call(api, event_file, body=deep)

    # Then it is refused as a bad request naming why (it was a 500 "internal error"), and no task starts
    assert status == 400
    assert "nested too deeply" in json.dumps(answer)
    assert store.tasks == {}
