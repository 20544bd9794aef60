"""Text quoted from supernodes and managers is scrubbed of every form of the credentials sent with
the blob (the raw header value, a bare token, a Basic header's decoded user and password), of any
Bearer/Basic credential or JWT whoever's it is, and of URL signatures: Dragonfly 1 ``errorMsg`` and
refusals, Dragonfly 2 job errors and failure descriptions."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from preheat.adapters.dragonfly1 import Dragonfly1Driver
from preheat.adapters.dragonfly2_jobs import interpret_job
from preheat.errors import PermanentFailure
from preheat.models import Blob, BlobState, Credentials
from preheat.settings import Settings
from tests.support.registry import StubRequest, StubResponse, StubServer

USER, PASSWORD = "robot-user", "Pw-7c1e5b9d"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "tok-3f9a0c8e71"
BLOB = "http://registry.example.com/v2/app/blobs/sha256:" + "a" * 64
SIGNED = "https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=5ig4ture0f9"
LEAKS = (PASSWORD, USER, TOKEN, BASIC.split()[1], "5ig4ture0f9")


def assert_clean(text: str | None, leaks: tuple[str, ...] = LEAKS) -> None:
    assert text
    for leak in leaks:
        assert leak not in text


class Supernode:
    """A Dragonfly 1 supernode that accepts every preheat and fails it with ``error``."""

    def __init__(self, server: StubServer) -> None:
        self.error = ""
        self.refusal = ""
        server.handler = self.handle

    def handle(self, request: StubRequest) -> StubResponse:
        if request.method == "POST" and self.refusal:
            return StubResponse.json({"code": 400, "message": self.refusal}, 400)
        if request.method == "POST":
            return StubResponse.json({"ID": "task-1"}, 201)
        return StubResponse.json({"ID": "task-1", "status": "FAILED", "errorMsg": self.error})


@pytest.fixture
def supernode() -> Iterator[tuple[Supernode, str]]:
    with StubServer() as server:
        yield Supernode(server), f"http://{server.host}"


def driver(target: str) -> Dragonfly1Driver:
    return Dragonfly1Driver(Settings(supernodes=(target,)), sleep=lambda seconds: None)


@pytest.mark.parametrize(
    "header",
    [BASIC, f"Bearer {TOKEN}"],
)
def test_a_dragonfly1_error_msg_quoting_a_bare_token_or_the_decoded_user_and_password_is_scrubbed(
    supernode: tuple[Supernode, str], header: str
) -> None:
    stub, target = supernode
    stub.error = (
        f"dfget failed: user {USER} password {PASSWORD} token {TOKEN} "
        f"(credentials {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}) fetching {SIGNED}"
    )
    subject = driver(target)
    blob = Blob(url=BLOB, digest="sha256:" + "a" * 64, headers=Credentials({"Authorization": header}))

    created = subject.create(target, blob)
    answer = subject.status(target, created.task_id)

    assert answer.state is BlobState.FAILED
    # Each form of what was sent: a Basic header's decoded user and password, a Bearer's bare token.
    assert_clean(answer.error, (PASSWORD, USER, BASIC.split()[1]) if header == BASIC else (TOKEN,))
    assert "X-Amz-Signature=REDACTED" in (answer.error or "")


def test_a_credential_the_driver_never_sent_is_still_scrubbed_by_its_form(
    supernode: tuple[Supernode, str],
) -> None:
    """Another warm Lambda's check step: the status answer's text names a credential it never saw."""
    stub, target = supernode
    stub.error = f"registry said 401 to Authorization: {BASIC} and Bearer eyJhbGciOiJI.eyJzdWIiOiJ4.c2ln"

    answer = driver(target).status(target, "task-1")

    assert_clean(answer.error)
    assert "eyJzdWIiOiJ4" not in (answer.error or "")


def test_a_dragonfly1_refusal_echoing_the_decoded_password_is_scrubbed(
    supernode: tuple[Supernode, str],
) -> None:
    stub, target = supernode
    stub.refusal = f"bad headers: {USER}:{PASSWORD}"
    blob = Blob(url=BLOB, digest="sha256:" + "a" * 64, headers=Credentials({"Authorization": BASIC}))

    with pytest.raises(PermanentFailure, match="refused the preheat") as caught:
        driver(target).create(target, blob)

    assert_clean(str(caught.value))


def test_dragonfly2_job_errors_are_scrubbed_of_the_echoed_credentials_in_every_form() -> None:
    job = {
        "id": 7,
        "state": "FAILURE",
        "args": {"url": BLOB, "headers": {"Authorization": BASIC, "X-Token": f"Bearer {TOKEN}"}},
        "result": {
            "job_states": [
                {
                    "error": f"download {SIGNED} as {USER} with {PASSWORD}",
                    "results": [
                        {"failure_tasks": [{"hostname": "seed-0", "description": f"401 for token {TOKEN}"}]}
                    ],
                }
            ]
        },
    }

    answer = interpret_job("http://manager:8080", "7", job, ("manager-pat-0001",))

    assert answer.state is BlobState.FAILED
    assert_clean(answer.error)
    assert "seed-0" in (answer.error or "")
