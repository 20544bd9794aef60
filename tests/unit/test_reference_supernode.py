"""The reference Dragonfly 1 supernode (local/supernode.py) against a tiny local origin server."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests

from local.supernode import ReferenceSupernode
from tests.support.origin import Origin

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Bearer canary-7f3a9c"
TERMINAL = ("SUCCESS", "FAILED")


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def origin() -> Iterator[Origin]:
    with closing(Origin()) as server:
        yield server


@pytest.fixture
def supernode(tmp_path: Path) -> Iterator[ReferenceSupernode]:
    with ReferenceSupernode(tmp_path / "cache") as node:
        yield node


def create(node: ReferenceSupernode, **body: Any) -> requests.Response:
    return requests.post(f"{node.url}/preheats", json={"type": "file", **body}, timeout=5)


def wait_for(node: ReferenceSupernode, task_id: str, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        answer = requests.get(f"{node.url}/preheats/{task_id}", timeout=5)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"task stayed {body['status']}"
        time.sleep(0.01)


def test_a_file_is_downloaded_into_the_cache_with_its_sha256(
    origin: Origin, supernode: ReferenceSupernode
) -> None:
    data = os.urandom(200_000)
    path = f"/v2/library/app/blobs/{sha256(data)}"
    origin.files[path] = data

    answer = create(supernode, url=origin.url(path), headers={"Authorization": SECRET})

    assert answer.status_code == 201
    task_id = answer.json()["ID"]
    done = wait_for(supernode, task_id)
    assert done["status"] == "SUCCESS", done
    assert done["errorMsg"] == ""
    assert done["startTime"].endswith("Z")
    assert done["finishTime"].endswith("Z")
    assert (supernode.cache_dir / task_id).read_bytes() == data
    assert supernode.cached_digests() == {sha256(data)}
    record = supernode.tasks()[task_id]
    assert (record.digest, record.size, record.cache_path) == (
        sha256(data),
        len(data),
        supernode.cache_dir / task_id,
    )
    assert [h.get("Authorization") for h in origin.requests_to(path)] == [SECRET]


def test_a_digest_mismatch_fails_and_keeps_nothing(origin: Origin, supernode: ReferenceSupernode) -> None:
    path = f"/v2/library/app/blobs/{sha256(b'what the manifest promised')}"
    origin.files[path] = b"something else"

    task_id = create(supernode, url=origin.url(path)).json()["ID"]

    done = wait_for(supernode, task_id)
    assert done["status"] == "FAILED"
    assert "digest mismatch" in done["errorMsg"]
    assert list(supernode.cache_dir.iterdir()) == []
    assert supernode.cached_digests() == set()


def test_signed_urls_differing_only_in_filtered_params_are_one_task(
    tmp_path: Path, origin: Origin, supernode: ReferenceSupernode
) -> None:
    origin.files["/bucket/layer"] = b"layer"
    first = origin.url("/bucket/layer?X-Amz-Date=1&part=1&X-Amz-Signature=aaa")
    second = origin.url("/bucket/layer?X-Amz-Date=2&part=1&X-Amz-Signature=bbb")
    other_part = origin.url("/bucket/layer?X-Amz-Date=1&part=2&X-Amz-Signature=aaa")
    signed = "X-Amz-Date&X-Amz-Signature"

    task_id = create(supernode, url=first, filter=signed).json()["ID"]
    wait_for(supernode, task_id)
    repeat = create(supernode, url=second, filter=signed)
    unfiltered = create(supernode, url=second)
    different = create(supernode, url=other_part, filter=signed)

    assert repeat.status_code == 208
    assert repeat.json()["message"].endswith(f"id:{task_id}")
    assert unfiltered.json()["ID"] != task_id
    assert different.json()["ID"] != task_id
    with ReferenceSupernode(tmp_path / "another") as another:
        assert create(another, url=second, filter=signed).json()["ID"] == task_id
    assert supernode.requests_seen[0]["filter"] == signed


def test_a_repeat_of_a_finished_task_answers_208_without_downloading_again(
    origin: Origin, supernode: ReferenceSupernode
) -> None:
    origin.files["/file"] = b"payload"
    task_id = create(supernode, url=origin.url("/file")).json()["ID"]
    wait_for(supernode, task_id)

    repeat = create(supernode, url=origin.url("/file"))

    assert repeat.status_code == 208
    assert repeat.json() == {"code": 208, "message": f"preheat task already exists, id:{task_id}"}
    assert len(origin.requests_to("/file")) == 1


def test_a_repeat_while_running_joins_the_task(tmp_path: Path, origin: Origin) -> None:
    origin.files["/file"] = b"payload"
    with ReferenceSupernode(tmp_path / "cache", finish_delay=0.3) as node:
        task_id = create(node, url=origin.url("/file")).json()["ID"]
        wait_for(node, task_id, ("RUNNING",))

        repeat = create(node, url=origin.url("/file"))

        assert (repeat.status_code, repeat.json()) == (201, {"ID": task_id})
        assert wait_for(node, task_id)["status"] == "SUCCESS"
    assert len(origin.requests_to("/file")) == 1


def test_downloads_beyond_the_pool_size_wait(tmp_path: Path, origin: Origin) -> None:
    origin.files["/a"] = b"a"
    origin.files["/b"] = b"b"
    origin.gate.clear()
    with ReferenceSupernode(tmp_path / "cache", max_concurrent_downloads=1) as node:
        first = create(node, url=origin.url("/a")).json()["ID"]
        second = create(node, url=origin.url("/b")).json()["ID"]
        wait_for(node, first, ("RUNNING",))

        assert node.tasks()[second].status == "WAITING"
        origin.gate.set()
        assert wait_for(node, first)["status"] == wait_for(node, second)["status"] == "SUCCESS"


def test_a_repeat_of_a_failed_task_restarts_it(origin: Origin, supernode: ReferenceSupernode) -> None:
    task_id = create(supernode, url=origin.url("/late")).json()["ID"]
    failed = wait_for(supernode, task_id)
    assert failed["status"] == "FAILED"
    assert "HTTP 404" in failed["errorMsg"]
    origin.files["/late"] = b"here now"

    again = create(supernode, url=origin.url("/late"))

    assert (again.status_code, again.json()) == (201, {"ID": task_id})
    assert wait_for(supernode, task_id)["status"] == "SUCCESS"
    assert supernode.cached_digests() == {sha256(b"here now")}


def test_authorization_is_dropped_on_a_redirect_to_another_host_as_go_does(
    origin: Origin, supernode: ReferenceSupernode
) -> None:
    storage = Origin()
    try:
        storage.files["/signed/blob"] = b"from storage"
        origin.redirects["/v2/app/blobs/x"] = "/v2/app/blobs/moved"
        # Another host name for the storage (Go compares host names, not ports).
        elsewhere = storage.url("/signed/blob?X-Amz-Signature=s").replace("127.0.0.1", "localhost")
        origin.redirects["/v2/app/blobs/moved"] = elsewhere
        headers = {"Authorization": SECRET, "X-Registry-Token": "not-a-credential-to-go"}

        task_id = create(supernode, url=origin.url("/v2/app/blobs/x"), headers=headers).json()["ID"]

        assert wait_for(supernode, task_id)["status"] == "SUCCESS"
        assert (supernode.cache_dir / task_id).read_bytes() == b"from storage"
        # The same host keeps them, even one redirect in.
        for path in ("/v2/app/blobs/x", "/v2/app/blobs/moved"):
            assert [h.get("Authorization") for h in origin.requests_to(path)] == [SECRET]
        [at_storage] = storage.requests_to("/signed/blob")
        assert SECRET not in at_storage.values()
        assert "Authorization" not in at_storage
        # Go's client keeps every header but Authorization, WWW-Authenticate and cookies.
        assert at_storage.get("X-Registry-Token") == "not-a-credential-to-go"
    finally:
        storage.close()


def test_the_task_id_is_the_go_supernodes(origin: Origin, supernode: ReferenceSupernode) -> None:
    # generateTaskID: sha256(key + URL without its filter params + identifier + key), computed here
    # from the algorithm, not with the supernode's function.
    key = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"
    url = origin.url("/file?a=1&Signature=x")
    task_id = create(supernode, url=url, filter="Signature", identifier="app").json()["ID"]
    expected = hashlib.sha256(f"{key}{origin.url('/file?a=1')}app{key}".encode()).hexdigest()
    assert task_id == expected


def test_requests_seen_holds_header_values_as_they_arrived_and_logs_do_not(
    origin: Origin, supernode: ReferenceSupernode, caplog: pytest.LogCaptureFixture
) -> None:
    # On the logger itself too: another test in this process may have quietened it.
    caplog.set_level(logging.DEBUG, logger="local.supernode")
    task_id = create(supernode, url=origin.url("/missing"), headers={"Authorization": SECRET}).json()["ID"]
    wait_for(supernode, task_id)

    # The record is the tests' evidence of what was sent, so it keeps the value itself.
    assert supernode.requests_seen == [
        {"type": "file", "url": origin.url("/missing"), "headers": {"Authorization": SECRET}}
    ]
    assert "Authorization" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in str(supernode.tasks())


def test_ping_list_delete_and_unknown_ids(origin: Origin, supernode: ReferenceSupernode) -> None:
    origin.files["/file"] = b"x"
    task_id = create(supernode, url=origin.url("/file")).json()["ID"]
    wait_for(supernode, task_id)

    ping = requests.get(f"{supernode.url}/_ping", timeout=5)
    listed = requests.get(f"{supernode.url}/api/v1/preheats", timeout=5).json()
    deleted = requests.delete(f"{supernode.url}/preheats/{task_id}", timeout=5)
    unknown = requests.get(f"{supernode.url}/preheats/{task_id}", timeout=5)

    assert (ping.status_code, ping.text) == (200, "OK")
    assert [task["ID"] for task in listed] == [task_id]
    assert deleted.status_code == 200
    assert unknown.status_code == 404
    assert unknown.json()["code"] == 404
    assert task_id in unknown.json()["message"]
    assert requests.delete(f"{supernode.url}/preheats/{task_id}", timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("not json", "not valid JSON"),
        (["a", "list"], "JSON object"),
        ({"type": "file"}, "'url'"),
        ({"type": "file", "url": "ftp://host/file"}, "http(s)"),
        ({"type": "blob", "url": "http://host/file"}, "'type'"),
        ({"type": "image", "url": "http://host/v2/app/manifests/1"}, "isn't supported"),
        ({"type": "file", "url": "http://host/file", "headers": ["Authorization"]}, "'headers'"),
        ({"type": "file", "url": "http://host/file", "headers": {"A": 1}}, "'A'"),
        ({"type": "file", "url": "http://host/file", "filter": ["a", "b"]}, "'filter'"),
    ],
)
def test_bad_bodies_answer_400(supernode: ReferenceSupernode, body: Any, says: str) -> None:
    if isinstance(body, str):
        answer = requests.post(f"{supernode.url}/preheats", data=body, timeout=5)
    else:
        answer = requests.post(f"{supernode.url}/preheats", json=body, timeout=5)

    assert answer.status_code == 400
    assert answer.json()["code"] == 400
    assert says in answer.json()["message"]
    assert supernode.tasks() == {}


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "local.supernode", "--port", str(port), "--cache-dir", str(tmp_path)]
    process = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/_ping", timeout=1).text == "OK":
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, "the supernode exited"
            assert time.monotonic() < deadline, "the supernode did not start"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)

        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stderr is not None
        process.stderr.close()
