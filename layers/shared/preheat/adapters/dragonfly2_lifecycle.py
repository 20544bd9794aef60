"""Verify and evict through a Dragonfly 2 manager: ``get_task`` and ``delete_task`` jobs.

A manager answers neither at once: its poller writes a job's state on its refresh schedule (right
after the create, then 30 s later, doubling), so a blob checked for the first time reads
``pending`` for about 30 s. The job ids are kept in this process's memory (a warm Lambda), keyed
by target and task id: a repeated verify reads the same jobs instead of creating more, and a
finished job's answer serves verifies for FRESH_SECONDS before a new job is created. A verify on
another (cold) Lambda creates its own jobs: that costs one job per blob, never a wrong answer.

What a get_task job says: the peers whose daemon has the task (``peers[].IsFinished``) in each
scheduler cluster. Peers that do not have it are not listed, so a scope's warm rule can only count
the peers that do: warm is at least one finished seed peer (``single_seed_peer``), every named
``ips`` finished, at least ``count`` finished, or else at least one finished peer of the kind the
scope draws from. Evict is a ``delete_task`` job per blob (by task id): every finished peer's daemon
deletes the task when its scheduler gets the job; the outcome is "evicted" once the manager accepted
the job (its result, which peers deleted it, shows on the same schedule, and a verify confirms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from preheat.adapters.http_target import display_target
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import BlobProgress, Targeting
from preheat.ports import EVICTED, Holding, PeerSeen

if TYPE_CHECKING:
    from preheat.adapters.dragonfly2 import Dragonfly2Driver

JOBS_PATH = "/oapi/v1/jobs"
# A finished get_task job's answer is reused this long; then a verify creates a new job.
FRESH_SECONDS = 60.0
# A pending job is given up (and a new one created) after this long: the manager fails a job after
# its 16th refresh (about 1 h), and removes finished ones after 6 h.
PENDING_SECONDS = 3600.0
MAX_PARALLEL = 16
MAX_REMEMBERED = 4096
_PENDING_STATES = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})
_SEED_TYPES = frozenset({"super", "strong", "weak"})


@dataclass
class _Job:
    job_id: int
    created: float
    finished: float | None = None
    answer: Holding | None = None


class Jobs:
    """The get_task jobs this process created, by (target, task id): see the module notes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}

    def get(self, key: tuple[str, str], now: float) -> _Job | None:
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None
            stale = (job.finished is not None and now - job.finished > FRESH_SECONDS) or (
                job.finished is None and now - job.created > PENDING_SECONDS
            )
            if stale:
                del self._jobs[key]
                return None
            return job

    def put(self, key: tuple[str, str], job: _Job) -> None:
        with self._lock:
            if len(self._jobs) >= MAX_REMEMBERED:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[key] = job

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._jobs.pop(key, None)


def _parallel(work: Any, items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(len(items), MAX_PARALLEL), thread_name_prefix="df2-life") as pool:
        return list(pool.map(work, items))


def _task_args(blob: BlobProgress) -> dict[str, Any] | None:
    """A job's args naming the blob's task: its node task id (what every peer stores it under)."""
    if blob.node_task_id:
        return {"task_id": blob.node_task_id}
    return None


def _create(
    driver: Dragonfly2Driver, target: str, job_type: str, args: dict[str, Any], targeting: Targeting | None
) -> int:
    """A job's id. With no ``targeting`` (a delete) the job names no cluster: the manager sends it
    to every scheduler cluster, wherever the task's preheat went."""
    from preheat.adapters.dragonfly2 import job_targeting  # noqa: PLC0415 - a cycle at import time

    clusters = job_targeting(driver.settings, targeting)[1] if targeting is not None else []
    body: dict[str, Any] = {"type": job_type, "args": args}
    if clusters:
        body["scheduler_cluster_ids"] = clusters
    what = f"accept a {job_type} job for task {args.get('task_id')}"
    code, answer, message = driver.job_call("POST", target, JOBS_PATH, what, body)
    job_id = answer.get("id") if isinstance(answer, dict) else None
    if code not in (200, 201) or not isinstance(job_id, int) or isinstance(job_id, bool):
        raise PermanentFailure(
            f"Dragonfly 2 manager {display_target(target)} refused a {job_type} job: HTTP {code}: {message}"
        )
    return job_id


def holders(driver: Dragonfly2Driver, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
    jobs = driver.lifecycle_jobs
    scope = targeting.scope or driver.settings.dragonfly2_scope
    return _parallel(lambda blob: _holding(driver, jobs, blob, targeting, scope), blobs)


def _holding(
    driver: Dragonfly2Driver, jobs: Jobs, blob: BlobProgress, targeting: Targeting, scope: str
) -> Holding:
    args = _task_args(blob)
    if args is None:
        return Holding(error="no Dragonfly 2 task id recorded for this blob")
    key = (blob.target, args["task_id"])
    try:
        job = jobs.get(key, time.monotonic())
        if job is None:
            job = _Job(_create(driver, blob.target, "get_task", args, targeting), time.monotonic())
            jobs.put(key, job)
        if job.answer is not None:
            return job.answer
        answer = _read(driver, blob.target, job, targeting, scope)
    except TransientFailure as exc:
        return Holding(unreachable=blob.target, error=str(exc))
    except PermanentFailure as exc:
        jobs.forget(key)
        return Holding(error=str(exc))
    if answer is None:
        jobs.forget(key)  # the manager lost the job: the next verify creates another
        return Holding(
            pending=True, error=f"get_task job {job.job_id} is gone from the manager; asking again"
        )
    if not answer.pending:
        job.finished, job.answer = time.monotonic(), answer
    return answer


def _read(
    driver: Dragonfly2Driver, target: str, job: _Job, targeting: Targeting, scope: str
) -> Holding | None:
    what = f"answer the status of get_task job {job.job_id}"
    code, answer, message = driver.job_call("GET", target, f"{JOBS_PATH}/{job.job_id}", what)
    if code == 404:
        return None
    if code != 200 or not isinstance(answer, dict):
        raise PermanentFailure(
            f"Dragonfly 2 manager {display_target(target)} answered HTTP {code} to {what}: {message}"
        )
    state = str(answer.get("state", "")).upper()
    if state in _PENDING_STATES:
        return Holding(
            pending=True, error=f"get_task job {job.job_id} is {state} (the manager's refresh schedule)"
        )
    if state != "SUCCESS":
        return Holding(error=f"get_task job {job.job_id} ended {state or 'without a state'}")
    peers = [peer for peer in _peers(answer) if isinstance(peer, dict)]
    seen = tuple(
        PeerSeen(str(peer.get("hostname") or ""), str(peer.get("ip") or ""), bool(peer.get("IsFinished")))
        for peer in peers
    )
    return Holding(peers=seen, warm=_warm(peers, scope, targeting))


def _peers(job: dict[str, Any]) -> list[Any]:
    result = job.get("result")
    states = result.get("job_states") if isinstance(result, dict) else None
    found: list[Any] = []
    for state in states if isinstance(states, list) else []:
        results = state.get("results") if isinstance(state, dict) else None
        for item in results if isinstance(results, list) else []:
            peers = item.get("peers") if isinstance(item, dict) else None
            found += peers if isinstance(peers, list) else []
    return found


def _warm(peers: list[dict[str, Any]], scope: str, targeting: Targeting) -> bool:
    """The scope's rule as far as a get_task answer can tell (see the module notes)."""
    finished = [peer for peer in peers if peer.get("IsFinished")]
    seeds = [peer for peer in finished if str(peer.get("host_type", "")).lower() in _SEED_TYPES]
    if scope == "single_seed_peer":
        return bool(seeds)
    kind = seeds if scope == "all_seed_peers" else [peer for peer in finished if peer not in seeds]
    if targeting.ips:
        return set(targeting.ips) <= {str(peer.get("ip")) for peer in kind}
    return len(kind) >= (targeting.count or 1)


def evict(driver: Dragonfly2Driver, blobs: Sequence[BlobProgress]) -> list[str]:
    jobs = driver.lifecycle_jobs

    def one(blob: BlobProgress) -> str:
        args = _task_args(blob)
        if args is None:
            return "no Dragonfly 2 task id recorded for this blob"
        try:
            _create(driver, blob.target, "delete_task", args, None)
        except (PermanentFailure, TransientFailure) as exc:
            return str(exc)
        # A verify must not answer from a get_task job read before the delete.
        jobs.forget((blob.target, args["task_id"]))
        return EVICTED

    return _parallel(one, blobs)
