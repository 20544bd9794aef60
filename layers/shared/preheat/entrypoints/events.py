"""EventBridge entry points: EventBridge Scheduler's input (a list of preheat requests) and ECR's
``ECR Image Action`` push events.

Both become plain preheat requests that go through ``PreheatRequest.parse`` and
``PreheatService.submit``, exactly as a POST /api/preheat body does: one domain service, several
entry points.

What an invocation answers (and logs)::

    {"taskIds": [...], "rejected": [{"index": 1, "reason": "..."}], "failed": [...]}

* ``rejected``: entries that are not valid requests. Each is logged with its reason (never a
  header value) and counted in the ``ScheduledPreheatsRejected`` metric; the good entries still run.
  Retrying would not help, so a rejection never fails the invocation.
* ``failed``: valid entries whose task could not be created because DynamoDB or SQS failed
  (``DependencyFailure``), counted in ``ScheduledPreheatsFailed``. When **no** task could be created
  the invocation raises, so Lambda's asynchronous retries (EventBridge and Scheduler invoke
  asynchronously) run the whole input again: nothing was created, so nothing is duplicated. When
  some tasks were created, raising would have the retry create those again, so the invocation
  succeeds and the failed entries are logged at ERROR level with their index, type and url, and
  counted (the template alarms on that metric).
* ``ignored`` (only for events that are not for us, e.g. an ECR DELETE): why nothing was done.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from preheat import bootstrap
from preheat.adapters.storage_signatures import redact_url
from preheat.errors import DependencyFailure, InvalidRequest
from preheat.models import PreheatRequest
from preheat.observability import logger, metrics, tracer

# EventBridge Scheduler and CloudFormation parameters carry a few KiB; a hand-made invocation could
# carry thousands of entries, more than one invocation should submit before its timeout.
MAX_PREHEATS_PER_EVENT = 100

ECR_SOURCE = "aws.ecr"
ECR_IMAGE_ACTION = "ECR Image Action"
_ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]+$")

METRIC_REJECTED = "ScheduledPreheatsRejected"
METRIC_FAILED = "ScheduledPreheatsFailed"


@dataclass(frozen=True)
class Problem:
    """An entry that produced no task: ``index`` into the input's list (None: the input as a whole)."""

    index: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


@dataclass
class Outcome:
    task_ids: list[str] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    ignored: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "taskIds": list(self.task_ids),
            "rejected": [problem.to_json() for problem in self.rejected],
            "failed": [problem.to_json() for problem in self.failed],
        }
        if self.ignored is not None:
            body["ignored"] = self.ignored
        return body


@dataclass(frozen=True)
class _Entries:
    """What an event asks for: request bodies by index, or why the input as a whole is unusable."""

    bodies: tuple[tuple[int, Any], ...] = ()
    rejected: tuple[Problem, ...] = ()
    ignored: str | None = None


def is_eventbridge_event(event: Any) -> bool:
    return isinstance(event, Mapping) and "detail-type" in event and "source" in event


@tracer.capture_method(capture_response=False)
def handle_event(event: Any) -> dict[str, Any]:
    """Submit every preheat ``event`` asks for; see the module's docstring for the answer."""
    entries = _ecr_entries(event) if is_eventbridge_event(event) else _schedule_entries(event)
    outcome = Outcome(rejected=list(entries.rejected), ignored=entries.ignored)
    if entries.ignored is not None:
        logger.info("event ignored", extra={"reason": entries.ignored})
        return outcome.to_json()
    for index, body in entries.bodies:
        _submit_one(index, body, outcome)
    _record(outcome)
    if outcome.failed and not outcome.task_ids:
        # Nothing was created: a retry of the whole input duplicates nothing.
        first = outcome.failed[0].reason
        raise DependencyFailure(
            f"no preheat task could be created ({len(outcome.failed)} failed, first: {first}); "
            "the invocation fails so that it is retried"
        )
    return outcome.to_json()


def _submit_one(index: int, body: Any, outcome: Outcome) -> None:
    try:
        request = PreheatRequest.parse(body)
        task = bootstrap.preheat_service().submit(request)
    except InvalidRequest as exc:
        # Refused by validation or by the outbound network policy. The reason names what is wrong
        # (never a header's value), exactly as the API answers it.
        outcome.rejected.append(Problem(index, str(exc)))
        logger.warning("scheduled preheat rejected", extra={"index": index, "reason": str(exc)})
        return
    except DependencyFailure as exc:
        outcome.failed.append(Problem(index, str(exc)))
        logger.error(
            "scheduled preheat could not be submitted",
            extra={
                "index": index,
                "type": request.type.value,
                "url": redact_url(request.url),
                "reason": str(exc),
            },
        )
        return
    outcome.task_ids.append(task.task_id)
    logger.info(
        "preheat task submitted",
        extra={"index": index, "task_id": task.task_id, "type": task.type.value, "url": task.url},
    )


def _record(outcome: Outcome) -> None:
    if outcome.task_ids:
        metrics.add_metric(name="TasksSubmitted", unit=MetricUnit.Count, value=len(outcome.task_ids))
    if outcome.rejected:
        metrics.add_metric(name=METRIC_REJECTED, unit=MetricUnit.Count, value=len(outcome.rejected))
    if outcome.failed:
        metrics.add_metric(name=METRIC_FAILED, unit=MetricUnit.Count, value=len(outcome.failed))
    summary = outcome.to_json()
    if outcome.failed:
        logger.error("scheduled preheats submitted, some failed", extra=summary)
    elif outcome.rejected:
        logger.warning("scheduled preheats submitted, some rejected", extra=summary)
    else:
        logger.info("scheduled preheats submitted", extra=summary)


# -- EventBridge Scheduler input ------------------------------------------------------------------


_SCHEDULE_SHAPE = (
    'expected {"preheats": [{"type": ..., "url": ...}, ...]}, a list of such requests, '
    'or one request {"type": ..., "url": ...}'
)


def _schedule_entries(event: Any) -> _Entries:
    """``{"preheats": [...]}``, a bare list of requests, or one request object."""
    if isinstance(event, Mapping) and "preheats" in event:
        items = event["preheats"]
        if not isinstance(items, list):
            return _Entries(rejected=(Problem(None, f"'preheats' must be a JSON array; {_SCHEDULE_SHAPE}"),))
    elif isinstance(event, list):
        items = event
    elif isinstance(event, Mapping) and ("type" in event or "url" in event):
        items = [dict(event)]
    else:
        return _Entries(rejected=(Problem(None, f"the input is not a preheat schedule: {_SCHEDULE_SHAPE}"),))
    if not items:
        logger.warning("the schedule's input lists no preheats")
    kept = tuple(enumerate(items[:MAX_PREHEATS_PER_EVENT]))
    rejected: tuple[Problem, ...] = ()
    if len(items) > MAX_PREHEATS_PER_EVENT:
        rejected = (
            Problem(
                MAX_PREHEATS_PER_EVENT,
                f"entries {MAX_PREHEATS_PER_EVENT} to {len(items) - 1} were not submitted: at most "
                f"{MAX_PREHEATS_PER_EVENT} preheats per event; split them across schedules",
            ),
        )
    return _Entries(bodies=kept, rejected=rejected)


# -- ECR push events ---------------------------------------------------------------------------


def ecr_image_url(account: str, region: str, repository: str, digest: str) -> str:
    """The pushed image by digest, on the registry ECR serves it from."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}/{repository}@{digest}"


def _ecr_entries(event: Mapping[str, Any]) -> _Entries:
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != ECR_SOURCE or detail_type != ECR_IMAGE_ACTION:
        return _Entries(ignored=f"not an ECR image action: {str(source)[:64]!r} {str(detail_type)[:64]!r}")
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        return _Entries(rejected=(Problem(0, "the ECR event has no 'detail' object"),))
    action, result = detail.get("action-type"), detail.get("result")
    if action != "PUSH" or result != "SUCCESS":
        return _Entries(
            ignored=f"ECR {str(action)[:16]} {str(result)[:16]}: only successful pushes are preheated"
        )
    account, region = str(event.get("account", "")), str(event.get("region", ""))
    repository, digest = detail.get("repository-name"), detail.get("image-digest")
    if not _ACCOUNT_RE.match(account) or not _REGION_RE.match(region):
        reason = f"the ECR event's account {account[:32]!r} or region {region[:32]!r} is not valid"
        return _Entries(rejected=(Problem(0, reason),))
    if not isinstance(repository, str) or not repository or not isinstance(digest, str) or not digest:
        return _Entries(rejected=(Problem(0, "the ECR push event names no repository-name or image-digest"),))
    logger.info(
        "ECR push",
        extra={"repository": repository, "digest": digest, "tag": detail.get("image-tag"), "region": region},
    )
    body = {"type": "image", "url": ecr_image_url(account, region, repository, digest)}
    return _Entries(bodies=((0, body),))
