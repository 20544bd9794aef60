"""Harbor's two Dragonfly preheat drivers, replayed against the local stack.

The requests are the ones Harbor's ``src/pkg/p2p/preheat/provider/dragonfly.go`` sends (before 2.12:
the Dragonfly 1 supernode API; from 2.12: the Dragonfly 2 manager's open API): the same paths and
bodies, ``Accept: application/json``, a 30 s client timeout, and each of Harbor's four provider
auth modes. The answers are read the way those drivers read them. Each image is really preheated
(a real Distribution registry, the reference supernode downloading every blob). Harbor polls every
10 s; the replay polls faster, which changes nothing the service sees but time.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from tests.support.registry import OciImage, RegistryServer, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

API_KEY = "harborReplayKey0123456789abcdefghijKLMN"
HARBOR_TIMEOUT = 30  # seconds, Harbor's provider HTTP client
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
PULL_TOKEN = "harbor-minted-pull-token"  # the registry of the tests is open: the token is only carried

# Harbor's auth modes: NONE, BASIC (username/password), OAUTH (Bearer token), CUSTOM (one header).
MODES = ["none", "basic", "bearer", "custom-header"]


def auth_headers(mode: str) -> dict[str, str]:
    if mode == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"harbor:{API_KEY}".encode()).decode()}
    if mode == "bearer":
        return {"Authorization": f"Bearer {API_KEY}"}
    if mode == "custom-header":
        return {"x-api-key": API_KEY}
    return {}


class Harbor:
    """Harbor's provider HTTP client: JSON in and out, 30 s timeout, the instance's credential."""

    def __init__(self, endpoint: str, mode: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", **auth_headers(mode)})

    def get(self, path: str) -> requests.Response:
        return self.session.get(f"{self.endpoint}{path}", timeout=HARBOR_TIMEOUT)

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return self.session.post(f"{self.endpoint}{path}", json=body, timeout=HARBOR_TIMEOUT)


def preheat_image(registry: RegistryServer, repository: str, tag: str, digest: str = "") -> dict[str, Any]:
    """The image Harbor's enforcer hands to the driver."""
    return {
        "type": "image",
        "url": f"http://{registry.host}/v2/{repository}/manifests/{tag}",
        "headers": {"Authorization": f"Bearer {PULL_TOKEN}"},
        "image": f"{registry.host}/{repository}",
        "tag": tag,
        "digest": digest,
        "extra_attrs": {},
    }


# --- the Dragonfly 1 driver (Harbor 2.1 to 2.11) -----------------------------------------------


def df1_preheat(harbor: Harbor, image: dict[str, Any]) -> dict[str, str]:
    response = harbor.post("/preheats", image)
    if response.status_code == 208:  # "already exists": Harbor counts it as done
        return {"task_id": "", "status": "SUCCESS"}
    assert response.status_code in (200, 201), response.text
    task_id = response.json()["ID"]
    assert isinstance(task_id, str)
    assert task_id
    return {"task_id": task_id, "status": "PENDING"}


def df1_check(harbor: Harbor, task_id: str) -> dict[str, str]:
    response = harbor.get(f"/preheats/{task_id}")
    assert response.status_code == 200, response.text
    answer = response.json()
    status = str(answer["status"]).upper()
    if status == "WAITING":
        status = "PENDING"
    for field in ("startTime", "finishTime"):
        assert isinstance(answer[field], str)
        assert answer[field] == "" or RFC3339.match(answer[field]), answer
    return {"status": status, "error": answer.get("errorMsg") or "", "start": answer["startTime"]}


def df1_run(harbor: Harbor, image: dict[str, Any], timeout: float = 60) -> dict[str, str]:
    started = df1_preheat(harbor, image)
    if started["status"] == "SUCCESS":
        return started
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = df1_check(harbor, started["task_id"])
        assert progress["status"] in ("PENDING", "RUNNING", "SUCCESS", "FAILED"), progress
        if progress["status"] in ("SUCCESS", "FAILED"):
            return {**progress, "task_id": started["task_id"]}
        time.sleep(0.2)
    raise AssertionError(f"Dragonfly 1 task {started['task_id']} not done after {timeout}s")


# --- the Dragonfly 2 driver (Harbor 2.12 and later) --------------------------------------------


def df2_job_body(image: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "preheat",
        "args": {
            "type": image["type"],
            "url": image["url"],
            "tag": "",
            "filtered_query_params": "",
            "headers": image["headers"],
            "scope": "single_seed_peer",
            "concurrent_count": 0,
            "timeout": 0,
        },
        "scheduler_cluster_ids": None,
    }


def df2_decode(response: requests.Response) -> dict[str, Any]:
    """Go's json.Unmarshal into Harbor's dragonflyJobResponse: an int id, time.Time times."""
    assert response.status_code // 100 == 2, response.text
    assert PULL_TOKEN not in response.text  # the job never echoes the headers' values
    job: dict[str, Any] = response.json()
    assert type(job["id"]) is int, job  # not a string, not a float
    assert 0 < job["id"] < 2**63, job  # a Go int
    for field in ("created_at", "updated_at"):
        assert RFC3339.match(job[field]), job
        datetime.fromisoformat(job[field].replace("Z", "+00:00"))
    assert isinstance(job["state"], str)
    return job


def df2_state(job: dict[str, Any]) -> dict[str, Any]:
    """Harbor's CheckProgress: PENDING shows as RUNNING, FAILURE as FAIL; SUCCESS prints a table of
    every success and failure task, FAILURE joins the job states' errors."""
    states = job["result"]["job_states"] if job.get("result") else []
    if job["state"] == "SUCCESS":
        rows = [
            [task["url"], task["hostname"], task["ip"], str(result["scheduler_cluster_id"]), "SUCCESS", ""]
            for state in states
            for result in state["results"] or []
            for task in result["success_tasks"] or []
        ] + [
            [
                task["url"],
                task["hostname"],
                task["ip"],
                str(result["scheduler_cluster_id"]),
                "FAILURE",
                task["description"],
            ]
            for state in states
            for result in state["results"] or []
            for task in result["failure_tasks"] or []
        ]
        return {"status": "SUCCESS", "rows": rows}
    if job["state"] == "FAILURE":
        return {"status": "FAIL", "error": "; ".join(str(state["error"]) for state in states)}
    if job["state"] == "PENDING":
        return {"status": "RUNNING"}
    return {"status": "FAIL", "error": f"unknown state: {job['state']}"}


def df2_run(harbor: Harbor, image: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    created = df2_decode(harbor.post("/oapi/v1/jobs", df2_job_body(image)))
    task_id = str(created["id"])  # Harbor keeps fmt.Sprintf("%d", job.ID)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = df2_decode(harbor.get(f"/oapi/v1/jobs/{task_id}"))
        assert job["id"] == created["id"]
        progress = df2_state(job)
        if progress["status"] != "RUNNING":
            return {**progress, "id": created["id"], "job": job}
        time.sleep(0.2)
    raise AssertionError(f"Dragonfly 2 job {task_id} not done after {timeout}s")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def stack(mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # One stack at a time: pytest finishes every test of one mode before the next mode's stack.
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("supernode-cache"),
        visibility_timeout=5,
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1"},
        api_key=None if mode == "none" else API_KEY,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def harbor(stack: LocalStack, mode: str) -> Harbor:
    return Harbor(stack.api_url, mode)


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    blobs = [f"harbor layer {n}\n".encode() * (800 * (n + 1)) for n in range(3)]
    return make_oci_layout(tmp_path_factory.mktemp("harbor-image"), blobs, config={"config": {"Cmd": ["sh"]}})


def manifest_blobs(registry: RegistryServer, repository: str, tag: str) -> set[str]:
    response = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=5,
    )
    response.raise_for_status()
    manifest = response.json()
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


# --- tests -------------------------------------------------------------------------------------


def test_both_health_checks_answer_200(harbor: Harbor):
    for path in ("/_ping", "/healthy"):
        response = harbor.get(path)
        assert response.status_code == 200, (path, response.text)


def test_without_the_key_only_mode_none_gets_in(stack: LocalStack, mode: str):
    for path in ("/_ping", "/healthy"):
        anonymous = requests.get(f"{stack.api_url}{path}", timeout=HARBOR_TIMEOUT)
        wrong = requests.get(f"{stack.api_url}{path}", headers={"x-api-key": "wrong"}, timeout=HARBOR_TIMEOUT)
        if mode == "none":
            assert (anonymous.status_code, wrong.status_code) == (200, 200)
        else:
            assert (anonymous.status_code, wrong.status_code) == (401, 403)


def test_dragonfly1_driver_preheats_a_multi_layer_image_to_success(
    stack: LocalStack, harbor: Harbor, registry: RegistryServer, layers: OciImage, mode: str
):
    repository = f"harbor/df1-{mode}"
    digest = registry.push(layers, f"{repository}:v1", fmt="oci")
    expected = manifest_blobs(registry, repository, "v1")
    assert len(expected) == 4
    outcome = df1_run(harbor, preheat_image(registry, repository, "v1", digest))
    assert outcome["status"] == "SUCCESS", outcome
    assert outcome["error"] == ""
    assert stack.supernode is not None
    assert expected <= stack.supernode.cached_digests()


def test_dragonfly1_driver_sees_a_missing_image_fail(harbor: Harbor, registry: RegistryServer, mode: str):
    outcome = df1_run(harbor, preheat_image(registry, f"harbor/df1-{mode}-absent", "nope"))
    assert outcome["status"] == "FAILED", outcome
    assert "not found" in outcome["error"]


def test_dragonfly1_errors_use_real_status_codes(harbor: Harbor):
    assert harbor.get("/preheats/0f8fad5b-d9cb-469f-a165-70867728950e").status_code == 404
    assert harbor.get("/preheats/not-a-task").status_code == 404
    for body in (
        {"type": "image"},
        {"type": "tarball", "url": "x.io/a:b"},
        {"type": "image", "url": "x.io/a", "headers": []},
    ):
        response = harbor.post("/preheats", body)
        assert response.status_code == 400, response.text
        answer = response.json()
        assert answer["code"] == 400
        assert answer["message"]


def test_dragonfly2_driver_preheats_a_multi_layer_image_to_success(
    stack: LocalStack, harbor: Harbor, registry: RegistryServer, layers: OciImage, mode: str
):
    repository = f"harbor/df2-{mode}"
    registry.push(layers, f"{repository}:v1", fmt="oci")
    expected = manifest_blobs(registry, repository, "v1")
    outcome = df2_run(harbor, preheat_image(registry, repository, "v1"))
    assert outcome["status"] == "SUCCESS", outcome
    rows = outcome["rows"]
    assert {row[0].rsplit("/", 1)[-1] for row in rows} == expected
    assert all(row[4] == "SUCCESS" and row[1] for row in rows), rows
    assert stack.supernode is not None
    assert expected <= stack.supernode.cached_digests()
    job = outcome["job"]
    assert job["args"] == {"type": "image", "url": preheat_image(registry, repository, "v1")["url"]}


def test_dragonfly2_driver_sees_a_missing_image_fail(harbor: Harbor, registry: RegistryServer, mode: str):
    outcome = df2_run(harbor, preheat_image(registry, f"harbor/df2-{mode}-absent", "nope"))
    assert outcome["status"] == "FAIL", outcome
    assert "not found" in outcome["error"]


def test_dragonfly2_an_identical_running_job_answers_the_same_id(
    harbor: Harbor, registry: RegistryServer, layers: OciImage, mode: str
):
    repository = f"harbor/df2-{mode}-twice"
    registry.push(layers, f"{repository}:v1", fmt="oci")
    body = df2_job_body(preheat_image(registry, repository, "v1"))
    first = df2_decode(harbor.post("/oapi/v1/jobs", body))
    second = df2_decode(harbor.post("/oapi/v1/jobs", body))
    if second["task_id"] == first["task_id"]:  # still running: the same task, under the same id
        assert second["id"] == first["id"]
    else:  # the first finished in between: a new task (tags move), with an id of its own
        assert df2_decode(harbor.get(f"/oapi/v1/jobs/{first['id']}"))["state"] != "PENDING"
        assert second["id"] != first["id"]


def test_dragonfly2_errors_use_real_status_codes(harbor: Harbor):
    for job_id in ("1", "999999999999", "x", "-3", str(2**60)):
        response = harbor.get(f"/oapi/v1/jobs/{job_id}")
        assert response.status_code == 404, (job_id, response.text)
        assert response.json()["message"]
    for body in (
        {"type": "sync_peers", "args": {}},
        {"type": "preheat"},
        {"type": "preheat", "args": {"type": "image"}},
        {"type": "preheat", "args": {"type": "image", "url": "x.io/a"}, "scheduler_cluster_ids": "1"},
    ):
        response = harbor.post("/oapi/v1/jobs", body)
        assert response.status_code == 400, response.text
        assert response.json()["message"]
