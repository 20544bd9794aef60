"""The EventBridge entry point over fakes: schedule inputs, ECR push events, what is rejected, what
fails, and what an invocation answers."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from preheat.entrypoints import events
from preheat.errors import DependencyFailure
from preheat.models import TaskStatus
from preheat.service import PreheatService
from preheat.settings import Settings
from tests.support.fakes import FakeQueue, FakeTaskStore
from tests.support.lambda_context import LambdaContext

EVENTS = Path(__file__).resolve().parents[2] / "events"
DIGEST = "sha256:" + "ab" * 32
SECRET = "Bearer do-not-log-me-0123456789"


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def ecr_event(**detail: Any) -> dict[str, Any]:
    event = sample("ecr-push.json")
    event["detail"].update(detail)
    return event


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in self.records)


@pytest.fixture
def store() -> FakeTaskStore:
    return FakeTaskStore()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture(autouse=True)
def service(monkeypatch: pytest.MonkeyPatch, store: FakeTaskStore, queue: FakeQueue) -> PreheatService:
    service = PreheatService(store, queue, Settings(allowed_networks=("127.0.0.0/8", "::1/128")))
    monkeypatch.setattr(events.bootstrap, "preheat_service", lambda: service)
    return service


@pytest.fixture(autouse=True)
def metrics() -> Iterator[dict[str, Any]]:
    events.metrics.clear_metrics()
    yield events.metrics.metric_set
    events.metrics.clear_metrics()


@pytest.fixture
def logs() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("preheat")
    # The level too: the logger keeps the one POWERTOOLS_LOG_LEVEL had when it was first built.
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def counted(metrics: dict[str, Any], name: str) -> float:
    return sum(metrics[name]["Value"]) if name in metrics else 0


def test_every_good_entry_becomes_a_task_and_every_bad_one_is_rejected_with_its_reason(
    store: FakeTaskStore, queue: FakeQueue, metrics: dict[str, Any], logs: Records
):
    answer = events.handle_event(
        {
            "preheats": [
                {"type": "image", "url": "registry.example.com/team/app:nightly", "platform": "linux/arm64"},
                {"type": "docker", "url": "registry.example.com/team/app:v1"},
                {"type": "file", "url": "https://files.example.com/model.bin", "header": {"X-Token": SECRET}},
                {"type": "image", "url": "registry.example.com/a b", "header": {"Authorization": SECRET}},
                "not an object",
                {"type": "image", "url": "registry.example.com/team/app:v1", "header": {"Authorization": 7}},
            ]
        }
    )
    assert len(answer["taskIds"]) == 2
    assert [store.tasks[task_id].url for task_id in answer["taskIds"]] == [
        "registry.example.com/team/app:nightly",
        "https://files.example.com/model.bin",
    ]
    assert store.tasks[answer["taskIds"][0]].platforms == ("linux/arm64",)
    # The credentials travel to the worker with the task's first step, exactly as from the API.
    assert queue.sent[1].message.headers.reveal() == {"X-Token": SECRET}
    assert [problem["index"] for problem in answer["rejected"]] == [1, 3, 4, 5]
    reasons = [problem["reason"] for problem in answer["rejected"]]
    assert "'type' must be \"image\" or \"file\", got 'docker'" in reasons[0]
    assert "spaces" in reasons[1]
    assert "must be a JSON object" in reasons[2]
    assert "'header' value of 'Authorization' must be a string" in reasons[3]
    assert answer["failed"] == []
    assert counted(metrics, "ScheduledPreheatsRejected") == 4
    assert counted(metrics, "TasksSubmitted") == 2
    assert SECRET not in logs.text()
    assert SECRET not in json.dumps(answer)
    assert "scheduled preheat rejected" in logs.text()


def test_a_single_request_object_and_a_bare_list_are_accepted(store: FakeTaskStore):
    single = events.handle_event({"type": "image", "url": "registry.example.com/team/app:v2"})
    listed = events.handle_event([{"type": "file", "url": "https://files.example.com/a.bin"}])
    for answer in (single, listed):
        assert answer["rejected"] == []
        assert len(answer["taskIds"]) == 1
    assert {task.url for task in store.tasks.values()} == {
        "registry.example.com/team/app:v2",
        "https://files.example.com/a.bin",
    }


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"preheats": {"type": "image"}}, "'preheats' must be a JSON array"),
        ({"something": "else"}, "the input is not a preheat schedule"),
        ("a string", "the input is not a preheat schedule"),
    ],
)
def test_an_input_of_the_wrong_shape_is_one_rejection(
    store: FakeTaskStore, metrics: dict[str, Any], event: Any, reason: str
):
    answer = events.handle_event(event)
    assert answer["taskIds"] == []
    (problem,) = answer["rejected"]
    assert problem["index"] is None
    assert reason in problem["reason"]
    assert counted(metrics, "ScheduledPreheatsRejected") == 1
    assert store.tasks == {}


def test_an_empty_list_does_nothing(store: FakeTaskStore, metrics: dict[str, Any]):
    assert events.handle_event({"preheats": []}) == {"taskIds": [], "rejected": [], "failed": []}
    assert store.tasks == {}
    assert metrics == {}


def test_entries_past_the_limit_are_rejected_together(store: FakeTaskStore):
    entries = [{"type": "file", "url": f"https://files.example.com/{n}.bin"} for n in range(105)]
    answer = events.handle_event({"preheats": entries})
    assert len(answer["taskIds"]) == events.MAX_PREHEATS_PER_EVENT
    assert answer["rejected"] == [
        {
            "index": 100,
            "reason": "entries 100 to 104 were not submitted: at most 100 preheats per event; "
            "split them across schedules",
        }
    ]


def test_when_no_task_can_be_created_the_invocation_fails_so_that_it_is_retried(
    store: FakeTaskStore, metrics: dict[str, Any], logs: Records
):
    store.fail_next = 2
    with pytest.raises(DependencyFailure, match="no preheat task could be created"):
        events.handle_event(sample("scheduled-preheats.json"))
    assert store.tasks == {}
    assert counted(metrics, "ScheduledPreheatsFailed") == 2
    assert "scheduled preheat could not be submitted" in logs.text()


def test_rejections_alone_never_fail_the_invocation(store: FakeTaskStore):
    answer = events.handle_event({"preheats": [{"type": "nope"}]})
    assert answer["taskIds"] == []
    assert len(answer["rejected"]) == 1


def test_when_some_tasks_were_created_the_failed_entries_are_reported_not_retried(
    store: FakeTaskStore, queue: FakeQueue, metrics: dict[str, Any], logs: Records
):
    entries = [{"type": "file", "url": f"https://files.example.com/{n}.bin"} for n in range(3)]
    queue.fail_next = 1  # the first entry's task cannot be queued: the service marks it FAIL
    answer = events.handle_event({"preheats": entries})
    assert len(answer["taskIds"]) == 2
    assert answer["failed"] == [{"index": 0, "reason": "queue down"}]
    assert counted(metrics, "ScheduledPreheatsFailed") == 1
    failed = [task for task in store.tasks.values() if task.url.endswith("/0.bin")]
    assert [task.status for task in failed] == [TaskStatus.FAIL]
    assert "some failed" in logs.text()


def test_an_ecr_push_preheats_the_pushed_image_by_digest(store: FakeTaskStore):
    answer = events.handle_event(ecr_event(**{"repository-name": "team/app", "image-digest": DIGEST}))
    (task_id,) = answer["taskIds"]
    assert store.tasks[task_id].url == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app@{DIGEST}"
    assert answer["rejected"] == []


def test_an_ecr_push_in_china_uses_the_china_domain(store: FakeTaskStore):
    event = ecr_event(**{"image-digest": DIGEST})
    event["region"] = "cn-north-1"
    (task_id,) = events.handle_event(event)["taskIds"]
    assert store.tasks[task_id].url.startswith("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/")


@pytest.mark.parametrize(
    ("change", "ignored"),
    [
        ({"action-type": "DELETE"}, "ECR DELETE SUCCESS"),
        ({"result": "FAILURE"}, "ECR PUSH FAILURE"),
    ],
)
def test_other_ecr_actions_are_ignored_with_a_log_line(
    store: FakeTaskStore, metrics: dict[str, Any], logs: Records, change: dict[str, str], ignored: str
):
    answer = events.handle_event(ecr_event(**change))
    assert answer["taskIds"] == []
    assert answer["rejected"] == []
    assert answer["ignored"].startswith(ignored)
    assert store.tasks == {}
    assert metrics == {}
    assert "event ignored" in logs.text()


def test_an_eventbridge_event_from_elsewhere_is_ignored(store: FakeTaskStore):
    answer = events.handle_event({"source": "aws.s3", "detail-type": "Object Created", "detail": {}})
    assert "not an ECR image action" in answer["ignored"]
    assert store.tasks == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image-digest": None}, "names no repository-name or image-digest"),
        ({"repository-name": "Team/App"}, "invalid repository name"),
        ({"image-digest": "sha256:short"}, "invalid digest"),
    ],
)
def test_a_malformed_ecr_push_is_rejected(store: FakeTaskStore, change: dict[str, Any], reason: str):
    answer = events.handle_event(ecr_event(**change))
    (problem,) = answer["rejected"]
    assert problem["index"] == 0
    assert reason in problem["reason"]
    assert store.tasks == {}


def test_an_ecr_push_from_a_bad_account_or_region_is_rejected(store: FakeTaskStore):
    event = ecr_event()
    event["account"] = "evil.example.com/x"
    (problem,) = events.handle_event(event)["rejected"]
    assert "account" in problem["reason"]
    assert store.tasks == {}


SCHEDULED_CONTEXT = LambdaContext(
    function_name="scheduled",
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:scheduled",
    remaining_millis=60_000,
)


def test_the_handler_never_logs_the_event_even_when_told_to(
    monkeypatch: pytest.MonkeyPatch, service: PreheatService, logs: Records
):
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    path = Path(__file__).resolve().parents[2] / "functions" / "scheduled" / "app.py"
    spec = importlib.util.spec_from_file_location("scheduled_app_under_test", path)
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    # The layer's modules app.py imports now (a local stack may have had them imported afresh).
    handler_events = sys.modules[app.handle_event.__module__]
    monkeypatch.setattr(handler_events.bootstrap, "preheat_service", lambda: service)
    event = {
        "preheats": [
            {"type": "image", "url": "registry.example.com/a:b", "header": {"Authorization": SECRET}}
        ]
    }
    answer = app.lambda_handler(event, SCHEDULED_CONTEXT)
    assert len(answer["taskIds"]) == 1
    assert "preheat task submitted" in logs.text()
    assert SECRET not in logs.text()
