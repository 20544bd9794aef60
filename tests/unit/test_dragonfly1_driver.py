"""The Dragonfly 1 driver, against the reference supernode and against small scripted fakes."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local.supernode import ReferenceSupernode
from preheat.adapters.dragonfly1 import UNKNOWN_TASK_ID, Dragonfly1Driver
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Blob, BlobState, Credentials
from preheat.ports import SupernodeDriver
from preheat.settings import Settings
from tests.support.http_server import QuietHandler, serve

pytestmark = pytest.mark.timeout(20)

CANARY = "Bearer canary-5d1e0b"
TASK_ID = "a" * 64
HANG = "hang"


@dataclass
class Fake:
    """A scripted supernode: ``routes`` maps ``(method, path)`` to answers given in order, the last
    one repeated; an answer is ``(status, body)`` or ``HANG`` (no answer for a while)."""

    routes: dict[tuple[str, str], list[Any]]
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    # Called before each answer (in the server's thread); a HANG lasts until close() releases it.
    gate: Callable[[], None] = lambda: None
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        fake = self

        class Handler(QuietHandler):
            def respond(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.calls.append((self.command, self.path, json.loads(raw) if raw else None))
                script = fake.routes.get((self.command, self.path), [(404, {"code": 404, "message": "no"})])
                answer = script[
                    min(sum(c[:2] == (self.command, self.path) for c in fake.calls), len(script)) - 1
                ]
                fake.gate()
                if answer == HANG:
                    fake.released.wait(10)
                    return
                status, body = answer
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.answer(payload, status, {"Content-Type": "application/json"})

            do_GET = do_POST = respond

        self._server = serve(Handler, "fake-supernode")

    @property
    def url(self) -> str:
        return self._server.url

    def count(self, method: str, path: str) -> int:
        return sum(call[:2] == (method, path) for call in self.calls)

    def close(self) -> None:
        self.released.set()
        self._server.close()


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for fake in started:
        fake.close()


@pytest.fixture
def fake(fakes: list[Fake]) -> Any:
    def start(routes: dict[tuple[str, str], list[Any]]) -> Fake:
        server = Fake(routes)
        fakes.append(server)
        return server

    return start


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def driver(*targets: str, timeout: float = 2.0, sleeps: Sleeps | None = None) -> Dragonfly1Driver:
    settings = Settings(supernodes=targets, supernode_timeout_seconds=timeout, check_timeout_seconds=timeout)
    return Dragonfly1Driver(settings, backoff_seconds=0.01, sleep=sleeps if sleeps is not None else Sleeps())


def blob(url: str = "http://registry.test/v2/app/blobs/sha256:00", **kwargs: Any) -> Blob:
    return Blob(url=url, headers=Credentials({"Authorization": CANARY}), **kwargs)


def status_answer(status: str, error: str = "") -> tuple[int, dict[str, Any]]:
    return 200, {"ID": TASK_ID, "status": status, "startTime": None, "finishTime": None, "errorMsg": error}


def test_against_the_reference_supernode_a_blob_goes_pending_then_success(tmp_path: Path) -> None:
    data = b"layer bytes" * 100
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    origin = Fake({("GET", f"/v2/app/blobs/{digest}?sig=1"): [(200, data)]})
    try:
        with ReferenceSupernode(tmp_path) as node:
            subject: SupernodeDriver = driver(node.url)
            url = f"{origin.url}/v2/app/blobs/{digest}?sig=1"

            created = subject.create(node.url, blob(url, digest=digest, filter=("sig", "expires")))
            deadline = time.monotonic() + 5
            task = created
            while task.state is BlobState.PENDING and time.monotonic() < deadline:
                time.sleep(0.01)
                task = subject.status(node.url, created.task_id)
            again = subject.create(node.url, blob(url, digest=digest))

            assert created.state is BlobState.PENDING
            assert task == type(task)(created.task_id, BlobState.SUCCESS)
            assert node.cached_digests() == {digest}
            assert node.requests_seen[0] == {
                "type": "file",
                "url": url,
                "headers": {"Authorization": CANARY},
                "filter": "sig&expires",
            }
            # Without a filter the supernode sees another task, so this one is new, not a 208.
            assert again.task_id != created.task_id
            assert set(node.requests_seen[1]) == {"type", "url", "headers"}
            assert subject.targets == (node.url,)
            assert subject.ping() == {node.url: None}
    finally:
        origin.close()


def test_ping_reports_each_target_in_parallel(fake: Any, closed_port_url: str) -> None:
    healthy = fake({("GET", "/_ping"): [(200, b"OK")]})
    broken = fake({("GET", "/_ping"): [(503, b"busy")]})
    hanging = fake({("GET", "/_ping"): [HANG]})
    # No supernode answers before all three were asked: pinged one after another, the first would
    # wait for the others past its timeout and be reported timed out.
    arrived: set[str] = set()  # the supernodes asked so far (a second ask of one does not count)
    lock = threading.Lock()
    everyone = threading.Event()

    def gate_of(name: str) -> Callable[[], None]:
        def gate() -> None:
            with lock:
                arrived.add(name)
                if len(arrived) == 3:
                    everyone.set()
            everyone.wait(5)

        return gate

    for name, server in (("healthy", healthy), ("broken", broken), ("hanging", hanging)):
        server.gate = gate_of(name)
    subject = driver(healthy.url, broken.url, hanging.url, closed_port_url, timeout=1.5)

    result = subject.ping()

    assert result == {
        healthy.url: None,
        broken.url: "HTTP 503",
        hanging.url: "timed out after 1.5s",
        closed_port_url: "connection refused",
    }


def test_208_reads_the_id_from_the_message_and_checks_it(fake: Any) -> None:
    message = f"preheat task already exists, id:{TASK_ID}"
    node = fake(
        {
            ("POST", "/preheats"): [(208, {"code": 208, "message": message})],
            ("GET", f"/preheats/{TASK_ID}"): [status_answer("success")],
        }
    )

    task = driver(node.url).create(node.url, blob())

    assert task == type(task)(TASK_ID, BlobState.SUCCESS)
    assert node.count("GET", f"/preheats/{TASK_ID}") == 1


def test_208_for_a_task_still_running_is_pending(fake: Any) -> None:
    node = fake(
        {
            ("POST", "/preheats"): [
                (208, {"code": 208, "message": f"preheat task already exists, id:{TASK_ID}"})
            ],
            ("GET", f"/preheats/{TASK_ID}"): [status_answer("RUNNING")],
        }
    )

    assert driver(node.url).create(node.url, blob()).state is BlobState.PENDING


def test_208_without_a_readable_id_counts_as_warm(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(208, b"")]})

    task = driver(node.url).create(node.url, blob())

    assert task == type(task)(UNKNOWN_TASK_ID, BlobState.SUCCESS)
    assert [call[0] for call in node.calls] == ["POST"]


def test_409_already_exists_from_the_java_supernode_is_checked(fake: Any) -> None:
    node = fake(
        {
            ("POST", "/preheats"): [
                (409, {"code": 409, "msg": f"preheat task already exists, id:{TASK_ID}"})
            ],
            ("GET", f"/preheats/{TASK_ID}"): [status_answer("FAILED", "dfget exited with 1")],
        }
    )

    task = driver(node.url).create(node.url, blob())

    assert task.state is BlobState.FAILED
    assert "dfget exited with 1" in (task.error or "")


def test_another_409_is_permanent(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(409, {"code": 409, "message": "conflicting filter"})]})

    with pytest.raises(PermanentFailure, match="conflicting filter"):
        driver(node.url).create(node.url, blob())


def test_status_maps_states_ignoring_case(fake: Any) -> None:
    node = fake(
        {
            ("GET", f"/preheats/{TASK_ID}"): [
                status_answer("waiting"),
                status_answer("Running"),
                status_answer("SUCCESS"),
                status_answer("failed", "404 from https://registry.test/v2/app/blobs/x"),
                status_answer("PAUSED"),
            ]
        }
    )
    subject = driver(node.url)

    states = [subject.status(node.url, TASK_ID) for _ in range(5)]

    assert [task.state for task in states] == [
        BlobState.PENDING,
        BlobState.PENDING,
        BlobState.SUCCESS,
        BlobState.FAILED,
        BlobState.FAILED,
    ]
    assert "404 from https://registry.test/v2/app/blobs/x" in (states[3].error or "")
    assert "unknown status 'PAUSED'" in (states[4].error or "")


def test_status_of_a_task_the_supernode_forgot_is_failed(fake: Any) -> None:
    node = fake({})

    task = driver(node.url).status(node.url, TASK_ID)

    assert task.state is BlobState.FAILED
    assert task.error == f"supernode {node.url} no longer knows task {TASK_ID} (restarted?)"


def test_a_500_or_429_is_retried_with_backoff(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(500, b"oops"), (429, b""), (201, {"ID": TASK_ID})]})
    sleeps = Sleeps()

    task = driver(node.url, sleeps=sleeps).create(node.url, blob())

    assert task == type(task)(TASK_ID, BlobState.PENDING)
    assert sleeps == [0.01, 0.02]


def test_a_500_forever_is_transient(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(500, b"oops")], ("GET", f"/preheats/{TASK_ID}"): [(503, b"")]})
    subject = driver(node.url)

    with pytest.raises(TransientFailure, match=f"supernode {node.url} .* after 3 attempts: HTTP 500"):
        subject.create(node.url, blob())
    with pytest.raises(TransientFailure, match="HTTP 503"):
        subject.status(node.url, TASK_ID)
    assert node.count("POST", "/preheats") == 3


def test_a_timeout_is_transient(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [HANG]})

    with pytest.raises(TransientFailure, match=r"timed out after 0\.2s"):
        driver(node.url, timeout=0.2).create(node.url, blob())


def test_an_unreachable_supernode_is_transient(closed_port_url: str) -> None:
    subject = driver(closed_port_url)

    with pytest.raises(TransientFailure, match=f"supernode {closed_port_url} .*: connection refused"):
        subject.create(closed_port_url, blob())
    assert subject.ping() == {closed_port_url: "connection refused"}


def test_a_400_is_permanent_and_names_the_supernode(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(400, {"code": 400, "message": "image isn't supported"})]})

    with pytest.raises(PermanentFailure) as failure:
        driver(node.url).create(node.url, blob())

    assert node.url in str(failure.value)
    assert "HTTP 400: image isn't supported" in str(failure.value)
    assert node.count("POST", "/preheats") == 1


@pytest.mark.parametrize(
    "routes",
    [
        {("POST", "/preheats"): [(400, {"code": 400, "message": f"bad header value {CANARY}"})]},
        {("POST", "/preheats"): [(500, {"code": 500, "message": f"echo {CANARY}"})]},
        {("POST", "/preheats"): [(201, {"error": f"no id for {CANARY}"})]},
        {("POST", "/preheats"): [HANG]},
    ],
    ids=["400-echo", "500-echo", "201-without-id", "timeout"],
)
def test_blob_headers_never_reach_exception_messages(fake: Any, routes: Any) -> None:
    node = fake(routes)

    with pytest.raises((PermanentFailure, TransientFailure)) as failure:
        driver(node.url, timeout=0.2).create(node.url, blob())

    assert node.calls[0][2]["headers"] == {"Authorization": CANARY}
    assert "canary" not in str(failure.value)
    assert "canary" not in repr(failure.value.args)


def test_blob_headers_never_reach_exception_messages_when_unreachable(closed_port_url: str) -> None:
    with pytest.raises(TransientFailure) as failure:
        driver(closed_port_url).create(closed_port_url, blob())

    assert "canary" not in str(failure.value)
    assert failure.value.__cause__ is None


# -- hostile answers: each is a failure with a message, never an exception of another kind ----------

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_an_answer_nested_too_deep_is_a_permanent_failure(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(201, DEEP)], ("GET", f"/preheats/{TASK_ID}"): [(200, DEEP)]})
    subject = driver(node.url)
    with pytest.raises(PermanentFailure, match='without a task "ID"'):
        subject.create(node.url, blob())
    with pytest.raises(PermanentFailure, match="answered HTTP 200 to the status"):
        subject.status(node.url, TASK_ID)


def test_a_huge_answer_is_read_no_further_than_the_bound(fake: Any) -> None:
    node = fake({("POST", "/preheats"): [(201, b" " * (3 * 1024 * 1024))]})
    with pytest.raises(PermanentFailure, match="answered more than 1048576 bytes"):
        driver(node.url).create(node.url, blob())
    assert node.count("POST", "/preheats") == 1


def test_wrong_types_and_invalid_utf8_are_failures_with_a_message(fake: Any) -> None:
    node = fake(
        {
            ("POST", "/preheats"): [(201, {"ID": ["not", "a", "string"]}), (201, {"ID": "x" * 10_000})],
            ("GET", f"/preheats/{TASK_ID}"): [
                (200, {"status": {"nested": True}}),
                (200, b'{"status": "FAILED", "errorMsg": "disk \xff\xfe full"}'),
                (400, b"\xff\xfe\xfd"),
            ],
        }
    )
    subject = driver(node.url)
    with pytest.raises(PermanentFailure, match='without a task "ID"'):
        subject.create(node.url, blob())
    with pytest.raises(PermanentFailure, match='without a task "ID"'):
        subject.create(node.url, blob())
    assert subject.status(node.url, TASK_ID).state is BlobState.FAILED  # an unknown status
    with pytest.raises(PermanentFailure, match="answered HTTP 200 to the status"):
        subject.status(node.url, TASK_ID)  # not JSON (invalid UTF-8)
    with pytest.raises(PermanentFailure, match="HTTP 400"):
        subject.status(node.url, TASK_ID)


def test_a_truncated_answer_is_transient(fake: Any) -> None:
    class Truncating(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(201)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"ID": "abc')  # then the connection closes

    with (
        serve(Truncating) as server,
        pytest.raises(TransientFailure, match="after 3 attempts: connection failed"),
    ):
        driver(server.url).create(server.url, blob())
