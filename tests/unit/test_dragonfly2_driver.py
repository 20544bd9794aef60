"""The Dragonfly 2 driver against the fake manager (local/dragonfly2_manager.py)."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError
from moto import mock_aws

from local.dragonfly2_manager import FakeDragonfly2Manager
from local.dragonfly2_requests import DEFAULT_FILTERED_QUERY_PARAMS
from preheat.adapters.dragonfly2 import Dragonfly2Driver
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Blob, BlobState, Credentials
from preheat.ports import SupernodeDriver, SupernodeTask
from preheat.settings import Settings
from preheat.task_ids import dragonfly2_task_id
from tests.support.dragonfly2 import manager_starter
from tests.support.http_server import QuietHandler, serve
from tests.support.origin import Origin

pytestmark = pytest.mark.timeout(20)

TOKEN = "df2-token-7c41aa"
CANARY = "Bearer canary-5d1e0b"
DATA = b"layer bytes" * 100
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with closing(Origin({f"/v2/app/blobs/{DIGEST}": DATA})) as server:
        yield server


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator[Callable[..., FakeDragonfly2Manager]]:
    with manager_starter(tmp_path, TOKEN, answer_at_once=True) as start:
        yield start


@pytest.fixture
def manager(start_manager: Callable[..., FakeDragonfly2Manager]) -> FakeDragonfly2Manager:
    return start_manager()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def no_secret_cache() -> Iterator[None]:
    """powertools keeps its providers (and their caches) at module level: start and end without them."""
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    yield
    parameters.clear_caches()  # type: ignore[no-untyped-call]


def driver(
    *targets: str,
    sleeps: Sleeps | None = None,
    timeout: float = 2.0,
    secret_reader: Callable[[str], str | bytes] | None = None,
    **settings: Any,
) -> Dragonfly2Driver:
    settings.setdefault("dragonfly2_token", TOKEN)
    config = Settings(
        supernodes=targets,
        supernode_api="dragonfly2",
        supernode_timeout_seconds=timeout,
        check_timeout_seconds=timeout,
        **settings,
    )
    return Dragonfly2Driver(
        config,
        backoff_seconds=0.01,
        sleep=sleeps if sleeps is not None else Sleeps(),
        secret_reader=secret_reader,
    )


def blob(url: str, **kwargs: Any) -> Blob:
    kwargs.setdefault("headers", Credentials({"Authorization": CANARY}))
    return Blob(url=url, digest=DIGEST, **kwargs)


def settle(subject: SupernodeDriver, target: str, task: SupernodeTask) -> SupernodeTask:
    """Poll until the job leaves PENDING (5 s at most)."""
    deadline = time.monotonic() + 5
    while task.state is BlobState.PENDING and time.monotonic() < deadline:
        time.sleep(0.01)
        task = subject.status(target, task.task_id)
    return task


def test_a_blob_goes_pending_then_success_and_lands_in_the_cache(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager(clusters={1: "east", 2: "west", 3: "spare"}, finish_delay=0.1)
    url = origin.url(f"/v2/app/blobs/{DIGEST}?X-Amz-Signature=abc&keep=1")
    subject: SupernodeDriver = driver(
        manager.url, dragonfly2_clusters=(1, 2), dragonfly2_scope="all_seed_peers"
    )

    created = subject.create(manager.url, blob(url, filter=("X-Amz-Signature", "X-Amz-Date")))
    first = subject.status(manager.url, created.task_id)
    task = settle(subject, manager.url, first)

    assert created == SupernodeTask("1", BlobState.PENDING)
    assert first.state is BlobState.PENDING
    assert task == SupernodeTask("1", BlobState.SUCCESS)
    assert manager.cached_digests() == {DIGEST}
    create_request = manager.requests_seen[0]
    assert create_request == {
        "method": "POST",
        "path": "/oapi/v1/jobs",
        # The fake records what arrived: the manager's token in Authorization, the blob's own
        # credentials in args.headers (handed over for the seed peers to download with).
        "authorization": f"Bearer {TOKEN}",
        "body": {
            "type": "preheat",
            "args": {
                "type": "file",
                "url": url,
                "headers": {"Authorization": CANARY},
                "filtered_query_params": "X-Amz-Signature&X-Amz-Date",
                "scope": "all_seed_peers",
            },
            "scheduler_cluster_ids": [1, 2],
        },
    }
    # The seed peer downloaded with the blob's headers; each cluster reported its own success.
    assert origin.seen[0][1]["Authorization"] == CANARY
    job = manager.job(1)
    assert job is not None
    assert [state["results"][0]["scheduler_cluster_id"] for state in job["result"]["job_states"]] == [1, 2]
    assert subject.targets == (manager.url,)
    assert subject.ping() == {manager.url: None}


def test_optional_fields_are_left_out_so_the_manager_applies_its_defaults(
    manager: FakeDragonfly2Manager, origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}")
    subject = driver(manager.url)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url, headers=Credentials())))

    assert task.state is BlobState.SUCCESS
    assert manager.requests_seen[0]["body"] == {
        "type": "preheat",
        "args": {"type": "file", "url": url, "scope": "single_seed_peer"},
    }
    job = manager.job(int(task.task_id))
    assert job is not None
    assert job["args"]["filtered_query_params"] == DEFAULT_FILTERED_QUERY_PARAMS
    # No cluster ids means every scheduler cluster.
    assert [cluster["id"] for cluster in job["scheduler_clusters"]] == [1]


def test_a_success_job_with_a_failure_task_for_the_url_is_failed(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}")
    manager = start_manager(fail_urls={url: "download piece 3 failed: connection reset by peer"})
    subject = driver(manager.url)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url)))

    job = manager.job(int(task.task_id))
    assert job is not None
    assert job["state"] == "SUCCESS"  # what the manager says...
    assert task.state is BlobState.FAILED  # ...and what is true
    assert task.error == (
        f"Dragonfly 2 job {task.task_id} on {manager.url} reported SUCCESS but the download failed on "
        "seed-peer-1 (127.0.0.1): download piece 3 failed: connection reset by peer"
    )


def test_a_success_job_without_a_success_task_for_the_url_is_failed(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}")
    manager = start_manager(drop_urls=[url], clusters={4: "only"})
    subject = driver(manager.url)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url)))

    assert task.state is BlobState.FAILED
    assert "reported SUCCESS but scheduler cluster 4 lists no seed peer that downloaded the file" in (
        task.error or ""
    )


def test_a_failure_job_is_failed_with_the_job_error(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}")
    manager = start_manager(error_urls={url: "cluster 1 scheduler 10.0.0.5 no available seed peer"})
    subject = driver(manager.url)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url)))

    assert task.state is BlobState.FAILED
    assert task.error == (
        f"Dragonfly 2 job {task.task_id} on {manager.url} failed: "
        "cluster 1 scheduler 10.0.0.5 no available seed peer"
    )


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        # The manager's single seed peer path logs the failure and leaves the URL out of a SUCCESS.
        ("single_seed_peer", "reported SUCCESS but scheduler cluster 1 lists no seed peer"),
        ("all_seed_peers", "failed: all peers preheat failed: group_"),
    ],
)
def test_a_download_that_fails_on_the_seed_peer_is_failed(
    manager: FakeDragonfly2Manager, origin: Origin, scope: str, expected: str
) -> None:
    url = origin.url("/v2/app/blobs/sha256:" + "0" * 64 + "?X-Amz-Signature=secret-sig")
    subject = driver(manager.url, dragonfly2_scope=scope)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url)))

    assert task.state is BlobState.FAILED
    assert expected in (task.error or "")
    if scope == "all_seed_peers":
        assert "answered HTTP 404" in (task.error or "")
    assert "secret-sig" not in (task.error or "")
    assert manager.cached_digests() == set()


def test_credentials_echoed_back_by_the_manager_never_reach_messages(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}?X-Amz-Signature=secret-sig")
    manager = start_manager(fail_urls={url: f"GET {url} with {CANARY} and {TOKEN}: 403"})
    subject = driver(manager.url)

    task = settle(subject, manager.url, subject.create(manager.url, blob(url)))

    job = manager.job(int(task.task_id))
    assert job is not None
    assert job["args"]["headers"] == {"Authorization": CANARY}  # the manager stores and echoes them
    assert task.state is BlobState.FAILED
    assert "canary" not in (task.error or "")
    assert TOKEN not in (task.error or "")
    assert "secret-sig" not in (task.error or "")
    assert "<redacted>" in (task.error or "")


def test_a_job_the_manager_forgot_is_failed(manager: FakeDragonfly2Manager, origin: Origin) -> None:
    subject = driver(manager.url)
    created = subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))
    manager.forget(int(created.task_id))

    task = subject.status(manager.url, created.task_id)

    assert task == SupernodeTask(
        created.task_id,
        BlobState.FAILED,
        f"Dragonfly 2 manager {manager.url} no longer knows job {created.task_id} "
        "(finished jobs are removed after 6 h)",
    )
    assert subject.status(manager.url, "999").state is BlobState.FAILED
    assert "not a Dragonfly 2 job id" in (subject.status(manager.url, "a" * 64).error or "")


def test_a_finished_job_is_forgotten_after_its_ttl(
    start_manager: Callable[..., FakeDragonfly2Manager], origin: Origin
) -> None:
    manager = start_manager(job_ttl=0.0)
    subject = driver(manager.url)

    task = settle(
        subject, manager.url, subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))
    )
    again = subject.status(manager.url, task.task_id)

    assert task.state is BlobState.SUCCESS
    assert again.state is BlobState.FAILED
    assert "no longer knows job" in (again.error or "")


@pytest.mark.parametrize(
    ("manager_options", "token", "expected"),
    [
        ({}, "wrong-token-31f", "HTTP 401: Unauthorized"),
        ({"inactive_tokens": ["inactive-token-9d2"]}, "inactive-token-9d2", "HTTP 403: Token is inactive"),
    ],
    ids=["401", "403"],
)
def test_a_refused_token_is_permanent_and_never_quoted(
    start_manager: Callable[..., FakeDragonfly2Manager],
    origin: Origin,
    manager_options: dict[str, Any],
    token: str,
    expected: str,
) -> None:
    manager = start_manager(**manager_options)
    subject = driver(manager.url, dragonfly2_token=token)

    with pytest.raises(PermanentFailure) as on_create:
        subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))
    with pytest.raises(PermanentFailure) as on_status:
        subject.status(manager.url, "1")

    for failure in (on_create, on_status):
        message = str(failure.value)
        assert f"Dragonfly 2 manager {manager.url} refused the token ({expected})" in message
        assert token not in message
        assert "canary" not in message
    assert len(manager.requests_seen) == 2  # no retries
    # The token went as a bearer, and nowhere else.
    assert all(request["authorization"] == f"Bearer {token}" for request in manager.requests_seen)
    assert token not in repr([request["body"] for request in manager.requests_seen])


def test_a_request_the_manager_rejects_is_permanent(manager: FakeDragonfly2Manager, origin: Origin) -> None:
    subject = driver(manager.url, dragonfly2_clusters=(1, 9))

    with pytest.raises(PermanentFailure) as failure:
        subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))

    assert str(failure.value) == (
        f"Dragonfly 2 manager {manager.url} refused the preheat of {DIGEST}: "
        "HTTP 404: scheduler cluster id 9: record not found"
    )
    assert len(manager.requests_seen) == 1


def test_a_500_is_retried_with_backoff_and_a_429_waited_out(
    manager: FakeDragonfly2Manager, origin: Origin
) -> None:
    manager.inject_errors("POST", 1, status=500)
    manager.inject_errors("POST", 1, status=429)
    sleeps = Sleeps()
    subject = driver(manager.url, sleeps=sleeps)

    task = subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))

    assert task == SupernodeTask("1", BlobState.PENDING)
    # The 500 costs a retry of the driver's own backoff; the 429 a jittered wait of its own.
    assert sleeps[0] == 0.01
    assert len(sleeps) == 2
    assert 0 <= sleeps[1] <= 0.5
    assert subject.rate_limited == 1
    assert len(manager.requests_seen) == 3


def test_a_500_forever_is_transient(manager: FakeDragonfly2Manager, origin: Origin) -> None:
    manager.inject_errors("POST", 10, status=500)
    manager.inject_errors("GET", 10, status=503)
    subject = driver(manager.url)

    with pytest.raises(TransientFailure, match=f"manager {manager.url} .* after 3 attempts: HTTP 500"):
        subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))
    with pytest.raises(TransientFailure, match="status of job 1 after 3 attempts: HTTP 503"):
        subject.status(manager.url, "1")
    assert [request["method"] for request in manager.requests_seen] == ["POST"] * 3 + ["GET"] * 3


def test_an_unreachable_manager_is_transient(closed_port_url: str) -> None:
    subject = driver(closed_port_url)

    with pytest.raises(TransientFailure) as failure:
        subject.create(closed_port_url, blob("http://registry.test/v2/app/blobs/x"))

    assert str(failure.value) == (
        f"Dragonfly 2 manager {closed_port_url} did not accept the preheat of {DIGEST} "
        "after 3 attempts: connection refused"
    )
    assert failure.value.__cause__ is None
    assert subject.ping() == {closed_port_url: "connection refused"}


def test_ping_reports_each_manager(
    start_manager: Callable[..., FakeDragonfly2Manager], closed_port_url: str
) -> None:
    healthy, sick = start_manager(), start_manager()
    sick.healthy = False

    result = driver(healthy.url, sick.url, closed_port_url, dragonfly2_token="").ping()

    # /healthy needs no token, so a health check works before one is configured.
    assert result == {healthy.url: None, sick.url: "HTTP 503", closed_port_url: "connection refused"}


def test_a_missing_token_says_how_to_configure_one(manager: FakeDragonfly2Manager) -> None:
    subject = driver(manager.url, dragonfly2_token="")

    with pytest.raises(
        PermanentFailure, match="set PREHEAT_DRAGONFLY2_TOKEN or PREHEAT_DRAGONFLY2_TOKEN_SECRET"
    ):
        subject.create(manager.url, blob("http://registry.test/v2/app/blobs/x"))
    with pytest.raises(PermanentFailure, match="set PREHEAT_DRAGONFLY2_TOKEN or"):
        subject.status(manager.url, "1")
    assert manager.requests_seen == []


@pytest.mark.parametrize(
    "stored", [TOKEN, f"  {TOKEN}\n", json.dumps({"token": TOKEN})], ids=["bare", "padded", "json"]
)
@pytest.mark.usefixtures("no_secret_cache")
def test_the_token_is_read_from_secrets_manager(
    manager: FakeDragonfly2Manager, origin: Origin, monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        boto3.client("secretsmanager").create_secret(Name="preheat/df2-token", SecretString=stored)
        subject = driver(manager.url, dragonfly2_token="", dragonfly2_token_secret="preheat/df2-token")

        task = settle(
            subject, manager.url, subject.create(manager.url, blob(origin.url(f"/v2/app/blobs/{DIGEST}")))
        )

    assert task.state is BlobState.SUCCESS


@pytest.mark.usefixtures("no_secret_cache")
def test_a_missing_secret_is_permanent(
    monkeypatch: pytest.MonkeyPatch, manager: FakeDragonfly2Manager
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        subject = driver(manager.url, dragonfly2_token="", dragonfly2_token_secret="preheat/absent")

        with pytest.raises(PermanentFailure) as failure:
            subject.status(manager.url, "1")

    assert str(failure.value) == (
        "cannot read the Dragonfly 2 manager token from secret 'preheat/absent': ResourceNotFoundException"
    )


def test_a_throttled_secret_read_is_transient_and_a_secret_without_a_token_permanent(
    manager: FakeDragonfly2Manager,
) -> None:
    def throttled(name: str) -> str:
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetSecretValue"
        )

    with pytest.raises(TransientFailure, match="ThrottlingException"):
        driver(manager.url, dragonfly2_token="", dragonfly2_token_secret="s", secret_reader=throttled).status(
            manager.url, "1"
        )
    with pytest.raises(PermanentFailure, match=r"secret 's' holds no Dragonfly 2 manager token"):
        driver(
            manager.url,
            dragonfly2_token="",
            dragonfly2_token_secret="s",
            secret_reader=lambda name: '{"password": "x"}',
        ).status(manager.url, "1")
    assert manager.requests_seen == []


@pytest.mark.parametrize(
    ("job", "state", "error"),
    [
        ({"state": "RECEIVED"}, BlobState.PENDING, None),
        ({"state": "STARTED"}, BlobState.PENDING, None),
        ({"state": "RETRY"}, BlobState.PENDING, None),
        ({"state": "SUCCESS", "result": None}, BlobState.FAILED, "SUCCESS but its result lists no seed peer"),
        ({"state": "FAILURE", "result": None}, BlobState.FAILED, "failed: no reason given"),
        ({"state": "REVOKED"}, BlobState.FAILED, "unknown state 'REVOKED'"),
    ],
)
def test_odd_job_answers(
    start_manager: Callable[..., FakeDragonfly2Manager],
    monkeypatch: pytest.MonkeyPatch,
    job: dict[str, Any],
    state: BlobState,
    error: str | None,
) -> None:
    manager = start_manager()
    monkeypatch.setattr(manager, "get", lambda raw_id: (200, {"id": int(raw_id), **job}))

    task = driver(manager.url).status(manager.url, "7")

    assert task.state is state
    if error is None:
        assert task.error is None
    else:
        assert error in (task.error or "")


def test_hostile_manager_answers_are_failures_with_a_message() -> None:
    """JSON nested too deep, a body past the bound, wrong types and bytes that are not UTF-8."""
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        json.dumps({"id": {"nested": [1]}, "state": 7}).encode(),
        b'{"id": "\xff\xfe", "message": "\xff"}',
    ]

    class Hostile(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(bodies.pop(0), headers={"Content-Type": "application/json"})

    with serve(Hostile) as server:
        url = server.url
        subject = driver(url)
        reasons = []
        for _ in range(4):
            with pytest.raises(PermanentFailure) as failure:
                subject.create(url, blob("http://registry.test/v2/app/blobs/x"))
            reasons.append(str(failure.value))
    assert "answered more than 1048576 bytes" in reasons[1]
    for reason in reasons:
        assert f"Dragonfly 2 manager {url}" in reason
        assert CANARY not in reason


def test_under_blob_digest_ids_the_job_asks_for_them_and_node_task_id_is_the_digest(
    manager: FakeDragonfly2Manager, origin: Origin
) -> None:
    url = origin.url(f"/v2/app/blobs/{DIGEST}")
    by_url, by_digest = driver(manager.url), driver(manager.url, dragonfly2_task_ids="blob-digest")

    task = settle(by_digest, manager.url, by_digest.create(manager.url, blob(url)))

    assert task.state is BlobState.SUCCESS
    assert manager.requests_seen[0]["body"]["args"]["enable_task_id_based_blob_digest"] is True
    hex_digest = DIGEST.removeprefix("sha256:")
    assert by_digest.node_task_id(blob(url)) == hex_digest
    assert by_url.node_task_id(blob(url)) == dragonfly2_task_id(url)
    # The seed peer's task is the one a node of such a cluster asks for.
    assert manager.tasks()[hex_digest].status == "SUCCESS"
    # The default mode leaves the flag out, as the manager defaults it (false).
    by_url.create(manager.url, blob(url))
    assert "enable_task_id_based_blob_digest" not in manager.requests_seen[-1]["body"]["args"]
    # A blob URL whose digest a node refuses has no id to show.
    assert (
        by_digest.node_task_id(blob(origin.url("/v2/app/blobs/md5:8a04994a666b4e4b20a2fd9e5a44f44c"))) == ""
    )
