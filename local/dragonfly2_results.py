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

# manager/service/job.go pollingJob(ctx, ..., 30*time.Second, 300*time.Second, 16): retry-go with
# BackOffDelay, the first try right after the create.
REFRESH_FIRST_DELAY = 30.0
REFRESH_MAX_DELAY = 300.0
REFRESH_TRIES = 16


def refresh_offsets() -> tuple[float, ...]:
    """Seconds after a create at which the manager's poller writes the job's state (16 tries)."""
    offsets = [0.0]
    delay = REFRESH_FIRST_DELAY
    for _ in range(REFRESH_TRIES - 1):
        offsets.append(offsets[-1] + delay)
        delay = min(delay * 2, REFRESH_MAX_DELAY)
    return tuple(offsets)


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
    # A delete_task job: whether the seed peer held the task (finished) when the job deleted it.
    deleted: bool = False


def held(seed: ReferenceSupernode, seed_id: str | None) -> TaskRecord | None:
    """The seed peer's task ``seed_id`` if it holds it now: running, or finished with its file still
    in the cache (a file deleted behind its back, or by a delete_task job, is not held)."""
    record = seed.tasks().get(seed_id or "")
    if record is None or record.status not in (WAITING, RUNNING, SUCCESS):
        return None
    if record.status == SUCCESS and (record.cache_path is None or not record.cache_path.is_file()):
        return None
    return record


def start_task_job(job: Job, seed: ReferenceSupernode, seed_id: str | None) -> None:
    """What a delete_task job does as soon as the schedulers get it: every peer holding the task
    finished deletes it (the seed peer's cached file, and its record, so a later preheat downloads
    again). The manager learns of it on its refresh schedule, like any job's result."""
    if job.request.kind != "delete_task" or seed_id is None:
        return
    record = held(seed, seed_id)
    job.deleted = record is not None and record.status == SUCCESS
    if job.deleted:
        seed.delete_cached(seed_id)
        seed.delete(seed_id)


def task_job_state(job: Job, index: int, cluster: int, seed: ReferenceSupernode) -> dict[str, Any]:
    """One scheduler cluster's answer to a get_task job (``GetTaskResponse``: the peers whose
    dfdaemon has the task, ``IsFinished`` when it finished) or a delete_task job
    (``DeleteTaskResponse``: the finished peers it deleted the task from)."""
    hostname, ip = f"seed-peer-{cluster}", "127.0.0.1"
    stamp = rfc3339(job.created_at)
    result: dict[str, Any] = {"scheduler_cluster_id": cluster}
    if job.request.kind == "get_task":
        record = held(seed, job.seed_tasks.get(job.request.task_id))
        result["peers"] = (
            []
            if record is None
            else [
                {
                    "id": f"{ip}-{hostname}",
                    "hostname": hostname,
                    "ip": ip,
                    "host_type": "super",
                    "created_at": stamp,
                    "updated_at": stamp,
                    "IsFinished": record.status == SUCCESS,
                }
            ]
        )
    else:
        deleted = [{"hostname": hostname, "ip": ip, "host_type": "super"}] if job.deleted else []
        result |= {"success_tasks": deleted, "failure_tasks": []}
    return {
        "task_uuid": job.task_uuids[index],
        "task_name": job.request.kind,
        "state": JOB_SUCCESS,
        "results": [result],
        "error": "",
        "created_at": stamp,
        "ttl": 0,
    }


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
    if job.request.kind != "preheat":
        return task_job_state(job, index, cluster, seed)
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
