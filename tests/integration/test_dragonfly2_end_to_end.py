"""The worker driving a Dragonfly 2 manager (the fake one of local/) through the local stack:
SUCCESS when the manager really cached the blob, FAIL when its job "succeeded" without it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import requests

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack
from tests.support.http_server import QuietHandler, serve
from tests.support.local_stack import dragonfly2_stack, preheated

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

TOKEN = "pat-e2e-0123456789abcdef"


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    class Files(QuietHandler):
        def do_GET(self) -> None:
            self.answer(self.path.encode() * 100)

    with serve(Files) as server:
        yield server.url


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, files: str) -> Iterator[FakeDragonfly2Manager]:
    # Job states shown as they are (answer_at_once): the real refresh schedule, which makes each
    # preheat here last 30 s, has its own test (test_dragonfly2_refresh_schedule.py).
    with FakeDragonfly2Manager(
        tmp_path_factory.mktemp("manager"),
        TOKEN,
        fail_urls={f"{files}/broken.bin": "peer disk full"},
        answer_at_once=True,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stack(manager: FakeDragonfly2Manager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with dragonfly2_stack(manager, TOKEN, tmp_path_factory.mktemp("unused")) as running:
        yield running


def test_check_probes_the_manager(stack: LocalStack):
    assert requests.get(f"{stack.api_url}/api/check", timeout=10).json() == {"code": 200}


def test_a_file_job_succeeds_and_the_blob_is_cached(
    stack: LocalStack, manager: FakeDragonfly2Manager, files: str
):
    data = preheated(stack, {"type": "file", "url": f"{files}/model.bin"})
    assert data["status"] == "SUCCESS", data
    expected = hashlib.sha256(b"/model.bin" * 100).hexdigest()
    assert f"sha256:{expected}" in manager.cached_digests()
    # The manager's records are what arrived: its token only as the bearer, no credential in a job.
    assert {request["authorization"] for request in manager.requests_seen} == {f"Bearer {TOKEN}"}
    creates = [request["body"] for request in manager.requests_seen if request["method"] == "POST"]
    assert creates
    assert TOKEN not in repr(creates)
    assert all("headers" not in body["args"] and "password" not in body["args"] for body in creates)


def test_a_job_that_succeeded_without_our_url_is_reported_fail(stack: LocalStack, files: str):
    data = preheated(stack, {"type": "file", "url": f"{files}/broken.bin"})
    assert data["status"] == "FAIL", data
    assert "peer disk full" in data["msg"]
    assert TOKEN not in data["msg"]
