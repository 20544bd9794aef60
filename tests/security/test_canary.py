"""A canary credential sent in `header` appears nowhere but in the requests made to the registry
(and to the supernode where the download URL is the registry itself).

Every sink is searched for it: everything the handlers print (logs at DEBUG, EMF metrics) and every
log record of every logger, the DynamoDB items, the SQS messages' attributes, the status answers
(with detail), the failure messages, and the dead-letter consumer's output."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from local.aws import client as local_client
from local.stack import LocalStack
from tests.support.fixtures import require_tools
from tests.support.local_stack import status_answers, submit, wait_for_events
from tests.support.registry import OciImage, RegistryServer, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

CANARY_PASSWORD = "canary-pw-7f3a9c1e5b"
CANARY_TOKEN = "canary-token-2d8e4f6a0c"
CANARIES = (CANARY_PASSWORD, CANARY_TOKEN)


class Everything(logging.Handler):
    """Keeps every record of every logger, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.__dict__!r}")


@pytest.fixture(scope="module")
def secured_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_tools("docker-registry", "skopeo", "htpasswd")
    with RegistryServer(tmp_path_factory.mktemp("registry"), users={"preheat": CANARY_PASSWORD}) as registry:
        yield registry


@pytest.fixture(scope="module")
def image(secured_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    layout = make_oci_layout(tmp_path_factory.mktemp("image"), [b"one\n", b"two\n"])
    secured_registry.push(layout, "canary/app:v1")
    return layout


@pytest.fixture(scope="module")
def records() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, records: Everything) -> Iterator[LocalStack]:
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("cache"),
        visibility_timeout=1,
        parameters={"LogLevel": "DEBUG"},
        extra_env={
            "PREHEAT_POLL_MAX_DELAY": "1",
            "POWERTOOLS_LOGGER_LOG_EVENT": "true",
            # The unreachable file server's task is retried every second or two, then ended by
            # its deadline with its last error (which must not quote the canary either).
            "PREHEAT_RETRY_MAX_DELAY": "2",
            "PREHEAT_TASK_TIMEOUT": "15",
        },
        events_file=tmp_path_factory.mktemp("events") / "events.jsonl",
    ) as running:
        yield running


@pytest.fixture
def handler_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every line the service's powertools loggers write, whichever stream their handlers hold
    (they keep the one they found at import, which pytest's capture may not see)."""
    lines: list[str] = []
    emit = logging.StreamHandler.emit

    def recording_emit(self: logging.StreamHandler, record: logging.LogRecord) -> None:  # type: ignore[type-arg]
        if record.name.startswith("preheat"):
            lines.append(self.format(record))
        emit(self, record)

    monkeypatch.setattr(logging.StreamHandler, "emit", recording_emit)
    # Every level: the logger keeps the level POWERTOOLS_LOG_LEVEL had when it was first built.
    service_logger = logging.getLogger("preheat")
    level = service_logger.level
    service_logger.setLevel(logging.DEBUG)
    yield lines
    service_logger.setLevel(level)


def preheated_answer(stack: LocalStack, body: dict[str, Any]) -> dict[str, Any]:
    """Submit ``body``; the task's last status answer (with detail), once it ended."""
    *_, answer = status_answers(stack, submit(stack, body), detail=True)
    return answer


def assert_clean(where: str, text: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"the canary leaked into {where}"


def test_the_canary_reaches_only_the_registry_and_the_supernode(
    stack: LocalStack,
    secured_registry: RegistryServer,
    image: OciImage,
    records: Everything,
    capsys: pytest.CaptureFixture[str],
    handler_output: list[str],
):
    answers = []
    image = f"{secured_registry.host}/canary/app:v1"
    # Success with the canary as the registry password.
    good = {"Authorization": secured_registry.basic_auth("preheat", CANARY_PASSWORD), "X-Extra": CANARY_TOKEN}
    # ... and the canary as its Step Functions task token (a credential too: answered, then dropped).
    answers.append(
        preheated_answer(stack, {"type": "image", "url": image, "header": good, "taskToken": CANARY_TOKEN})
    )
    assert answers[-1]["data"]["status"] == "SUCCESS", answers[-1]
    # Refused credentials: the failure message must say so without repeating them.
    wrong = {"Authorization": secured_registry.basic_auth("preheat", CANARY_TOKEN)}
    answers.append(preheated_answer(stack, {"type": "image", "url": image, "header": wrong}))
    assert answers[-1]["data"]["status"] == "FAIL"
    assert "refused" in answers[-1]["data"]["msg"] or "credentials" in answers[-1]["data"]["msg"]
    # An unreachable file server with a bearer canary: retried, then failed at its deadline.
    bearer = {"Authorization": f"Bearer {CANARY_TOKEN}"}
    answers.append(
        preheated_answer(stack, {"type": "file", "url": "http://127.0.0.1:9/never.bin", "header": bearer})
    )
    # Bad input carrying the canary.
    bad = requests.post(
        f"{stack.api_url}/api/preheat",
        timeout=10,
        json={"type": "image", "url": "bad url", "header": {"Authorization": CANARY_TOKEN}},
    ).json()
    assert bad["code"] == 400
    answers.append(bad)
    # A message that lands in the dead-letter queue with the canary in its body.
    sqs = local_client("sqs", stack.moto_url)
    sqs.send_message(
        QueueUrl=stack.queue_url("PreheatDeadLetterQueue"),
        MessageBody=json.dumps(
            {
                "v": 1,
                "taskId": "0f8fad5b-d9cb-469f-a165-70867728950e",
                "step": "start",
                "seq": 0,
                "header": {"Authorization": f"Bearer {CANARY_TOKEN}"},
            }
        ),
    )
    # The dead-letter consumer must have read (and deleted) it before its output is searched: a drain
    # that never happens fails here, not later as a search of output that was never written.
    deadline = time.monotonic() + 30
    while True:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.queue_url("PreheatDeadLetterQueue"), AttributeNames=["All"]
        )["Attributes"]
        if (
            attributes["ApproximateNumberOfMessages"] == "0"
            and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
        ):
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"the dead-letter queue was not drained within 30 s: {attributes}", pytrace=False)
        time.sleep(0.2)

    # Verify and evict of the task the canary warmed: their answers, records and events are sinks too.
    warmed = answers[0]["data"]["taskId"]
    answers.append(requests.get(f"{stack.api_url}/api/preheat/{warmed}/peers", timeout=30).json())
    assert answers[-1]["data"]["summary"]["layersWarm"] == 3, answers[-1]
    answers.append(requests.delete(f"{stack.api_url}/api/preheat/{warmed}", timeout=30).json())
    assert answers[-1]["data"]["evictedAt"], answers[-1]
    # The listing (what the console shows) holds the same tasks.
    listing = requests.get(f"{stack.api_url}/api/preheat", params={"limit": "100"}, timeout=10).json()
    assert len(listing["data"]["tasks"]) >= 3
    answers.append(listing)

    # The sinks.
    for answer in answers:
        assert_clean("a status answer", json.dumps(answer))
    dynamodb = local_client("dynamodb", stack.moto_url)
    # The task token may still be held (its answer follows the event): checked once it was answered.
    assert CANARY_PASSWORD not in repr(dynamodb.scan(TableName=stack.table_name("TasksTable"))["Items"])
    for queue in ("PreheatQueue", "PreheatDeadLetterQueue"):
        peek = sqs.receive_message(
            QueueUrl=stack.queue_url(queue),
            MessageAttributeNames=["All"],
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
        )
        for message in peek.get("Messages", []):
            assert_clean("SQS message attributes", json.dumps(message.get("MessageAttributes", {})))
    printed = capsys.readouterr()
    logged = "\n".join(handler_output)
    assert "preheat task submitted" in logged  # the handlers' own logs were captured
    assert_clean("the handlers' logs", logged)
    assert_clean("what the handlers printed (metrics)", printed.out + printed.err)
    assert_clean("log records", "\n".join(records.lines))
    # The completion events of the three tasks, as the bus delivered them.
    assert stack.events_file is not None
    task_ids = {
        answer["data"]["taskId"]
        for answer in answers
        if answer.get("code") == 200 and "taskId" in answer.get("data", {})
    }
    wait_for_events(stack, lambda events: task_ids <= {event["detail"]["taskId"] for event in events}, 20)
    events = stack.events_file.read_text(encoding="utf-8")
    assert len(task_ids) == 3
    assert all(task_id in events for task_id in task_ids)
    assert_clean("the completion events", events)
    # The task token is answered right after its task's event, then removed from the item: by now
    # it is gone from the table too (a few looks, since the answer follows the event).
    for _ in range(100):
        items = repr(dynamodb.scan(TableName=stack.table_name("TasksTable"))["Items"])
        if CANARY_TOKEN not in items:
            break
        time.sleep(0.05)
    assert_clean("DynamoDB, once the token was answered", items)
    # The one place it may go besides the registry and the file server: the supernode, which fetches
    # from them itself. Its record holds each create as it arrived: the image's blobs carried the
    # caller's headers (the canary password among them, which the supernode needs to download them),
    # the file carried its Bearer canary; the refused credentials and the bad input never reached it.
    assert stack.supernode is not None
    sent = stack.supernode.requests_seen
    blobs = [create for create in sent if create["url"].startswith(f"{secured_registry.url}/v2/canary/")]
    files = [create for create in sent if create["url"] == "http://127.0.0.1:9/never.bin"]
    # The config and two layers of the one successful task: each once, or again when SQS delivered
    # its start step twice (at least once: a supernode joins a repeated create).
    assert len({create["url"] for create in blobs}) == 3, sent
    assert files, sent  # the file server is unreachable from the supernode too
    assert len(blobs) + len(files) == len(sent), sent
    assert all(create["headers"] == good for create in blobs), blobs
    assert all(create["headers"] == bearer for create in files), files
    assert wrong["Authorization"] not in json.dumps(sent)
