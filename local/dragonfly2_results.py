"""What the fake Dragonfly 2 manager (``local/dragonfly2_manager.py``) knows of a job, and the state
and result it derives from the seed peer's downloads, as the scheduler's preheat reports them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from typing import Any

from local.dragonfly2_requests import SCOPES, PreheatJobRequest
from local.supernode import RUNNING, SUCCESS, WAITING, ReferenceSupernode, TaskRecord

log = logging.getLogger("local.dragonfly2_manager")

# Machinery task states, as the manager reports them.
PENDING = "PENDING"
STARTED = "STARTED"
JOB_SUCCESS = "SUCCESS"
JOB_FAILURE = "FAILURE"

# A test's override for a URL: ("fail" | "drop" | "error", text), or None.
Knob = Callable[[str], tuple[str, str] | None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def without_query(url: str) -> str:
    return url.split("?", 1)[0]


@dataclass
class Job:
    id: int
    group_uuid: str
    request: PreheatJobRequest
    clusters: tuple[int, ...]
    task_uuids: tuple[str, ...]
    created_at: datetime
    ready_at: float  # monotonic: no knob outcome shows before this
    started: float  # monotonic: when the create was answered, the poller's time zero
    seed_tasks: dict[str, str]  # url -> seed (reference supernode) task id, for downloaded URLs
    refused: dict[str, str] = field(default_factory=dict)  # url -> why the seed peers refuse it
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: float | None = None  # monotonic
    # What the poller last wrote (state, result): all GET answers show. None before its first try.
    written: tuple[str, dict[str, Any] | None] | None = None


def outcome(
    job: Job, url: str, seed_tasks: Mapping[str, TaskRecord], ready: bool, knobs: Knob
) -> tuple[str, str]:
    """What became of ``url``: pending, success, download failed, fail, error or drop, and why."""
    knob = knobs(url)
    if knob is not None:
        return knob if ready else ("pending", "")
    if url in job.refused:
        return "download failed", job.refused[url]
    seed_id = job.seed_tasks.get(url, "")
    seed_task = seed_tasks.get(seed_id)
    if seed_task is None:
        return "error", f"the seed peer lost task {seed_id}"
    if seed_task.status in (WAITING, RUNNING):
        return "pending", ""
    if seed_task.status == SUCCESS:
        return "success", ""
    return "download failed", f"task {seed_id} failed: {seed_task.error_msg}"


def job_state(job: Job, index: int, cluster: int, seed: ReferenceSupernode, knobs: Knob) -> dict[str, Any]:
    """One scheduler cluster's machinery task: its state, its result, its error.

    As the scheduler does: with ``single_seed_peer`` a URL whose download failed is only logged
    and left out of the result; with ``all_seed_peers``/``all_peers`` it is a failure task, and
    the task fails ("all peers preheat failed") only when no URL succeeded anywhere."""
    hostname, ip = f"seed-peer-{cluster}", "127.0.0.1"
    task_uuid = job.task_uuids[index]
    single = job.request.args.get("scope") not in SCOPES[1:]
    ready = monotonic() >= job.ready_at
    success: list[dict[str, str]] = []
    failure: list[dict[str, str]] = []
    errors: list[str] = []
    download_failed = False
    pending = False
    seed_tasks = seed.tasks() if job.seed_tasks else {}
    for url in job.request.urls:
        outcome_, text = outcome(job, url, seed_tasks, ready, knobs)
        pending = pending or outcome_ == "pending"
        if outcome_ == "success":
            success.append({"url": url, "hostname": hostname, "ip": ip})
        elif outcome_ == "error":
            errors.append(text)
        elif outcome_ == "fail" or (outcome_ == "download failed" and not single):
            failure.append({"url": url, "hostname": hostname, "ip": ip, "description": text})
        if outcome_ == "download failed":
            download_failed = True
            log.warning("[preheat]: preheat failed for %s: %s", without_query(url), text)
        # "drop": the URL is left out of the result altogether.
    if not single and download_failed and not success and not errors:
        first = failure[0]
        errors.append(
            f"all peers preheat failed: {job.group_uuid} {task_uuid} {first['ip']} {first['hostname']} "
            f"{first['description']}"
        )
    results: list[dict[str, Any]] | None = None
    if pending:
        state = STARTED if ready else PENDING
    elif errors:
        state = JOB_FAILURE
    else:
        state = JOB_SUCCESS
        # The single seed peer path leaves its lists nil (JSON null); the others make empty ones.
        empty: list[dict[str, str]] | None = None if single else []
        results = [
            {
                "success_tasks": success or empty,
                "failure_tasks": failure or empty,
                "scheduler_cluster_id": cluster,
            }
        ]
    return {
        "task_uuid": task_uuid,
        "task_name": "preheat",
        "state": state,
        "results": results,
        "error": "; ".join(errors) if state == JOB_FAILURE else "",
        "created_at": rfc3339(job.created_at),
        "ttl": 0,
    }
