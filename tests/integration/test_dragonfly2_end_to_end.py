"""The worker driving a Dragonfly 2 manager (the fake one of local/) through the local stack:
SUCCESS when the manager really cached the blob, FAIL when its job "succeeded" without it."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

TOKEN = "pat-e2e-0123456789abcdef"


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self.path.encode() * 100
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, files: str) -> Iterator[FakeDragonfly2Manager]:
    with FakeDragonfly2Manager(
        tmp_path_factory.mktemp("manager"), TOKEN, fail_urls={f"{files}/broken.bin": "peer disk full"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stack(manager: FakeDragonfly2Manager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        supernodes=[manager.url],
        parameters={"SupernodeApi": "dragonfly2"},
        extra_env={"PREHEAT_DRAGONFLY2_TOKEN": TOKEN},
        cache_dir=tmp_path_factory.mktemp("unused"),
    ) as running:
        yield running


def preheat_file(stack: LocalStack, url: str) -> dict[str, Any]:
    answer = requests.post(
        f"{stack.api_url}/api/preheat", json={"type": "file", "url": url}, timeout=10
    ).json()
    task_id = answer["data"]["taskId"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data: dict[str, Any] = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()[
            "data"
        ]
        if data["status"] != "RUNNING":
            return data
        time.sleep(0.1)
    raise AssertionError("still RUNNING after 60 s")


def test_check_probes_the_manager(stack: LocalStack):
    assert requests.get(f"{stack.api_url}/api/check", timeout=10).json() == {"code": 200}


def test_a_file_job_succeeds_and_the_blob_is_cached(
    stack: LocalStack, manager: FakeDragonfly2Manager, files: str
):
    data = preheat_file(stack, f"{files}/model.bin")
    assert data["status"] == "SUCCESS", data
    expected = hashlib.sha256(b"/model.bin" * 100).hexdigest()
    assert f"sha256:{expected}" in manager.cached_digests()
    assert TOKEN not in repr(manager.requests_seen)


def test_a_job_that_succeeded_without_our_url_is_reported_fail(stack: LocalStack, files: str):
    data = preheat_file(stack, f"{files}/broken.bin")
    assert data["status"] == "FAIL", data
    assert "peer disk full" in data["msg"]
    assert TOKEN not in data["msg"]
