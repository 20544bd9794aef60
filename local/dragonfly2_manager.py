"""A fake Dragonfly 2 manager: the open API's preheat jobs, backed by a real download cache.

A tool for the Preheat service's tests and for trying ``PREHEAT_SUPERNODE_API=dragonfly2`` without a
Dragonfly cluster; NOT a manager: no schedulers, no P2P, no database, jobs kept in memory. What it
does follow is the part of ``manager/handlers/job.go`` and ``internal/job`` the Preheat service
depends on:

* ``GET /healthy`` answers 200 ``OK`` without a token.
* ``POST /oapi/v1/jobs`` and ``GET``/``DELETE /oapi/v1/jobs/{id}`` need ``Authorization: Bearer
  <token>`` (or ``?access_token=``): 401 ``{"message":"Unauthorized"}`` without the configured
  token, 403 ``{"message":"Token is inactive"}`` for one of ``inactive_tokens``.
* A create is validated the way the manager binds it: 422 ``{"errors": "..."}`` for a missing
  ``type``, an ``args.type`` other than ``image``/``file``, no ``url``/``urls``, ill-typed fields;
  404 ``{"message":"scheduler cluster id N: record not found"}`` for an unknown cluster id. Only
  ``file`` preheats are carried out (the Preheat service resolves images itself); an ``image`` one
  is answered 422 saying so. Defaults are filled into the stored ``args`` as the manager does
  (``scope``, ``concurrent_count``, ``timeout`` in nanoseconds, the default ``filtered_query_params``).
* The answer is 200 with the job object: ``id`` (int), ``created_at``/``updated_at`` (RFC 3339),
  ``task_id`` (``group_<uuid>``), ``type``, ``state``, ``args`` (headers echoed back, as the manager
  does), ``result`` (null until the first look), ``scheduler_clusters``.
* ``GET /oapi/v1/jobs/{id}`` shows what the manager's poller last wrote: it refreshes a job's state on
  ``manager/service/job.go``'s schedule (``pollingJob(..., 30*time.Second, 300*time.Second, 16)``),
  right after the create, then 30 s later, doubling, capped at 300 s: about 0, 30, 90, 210, 450,
  750 s, then every 300 s; a job still unfinished after the 16th try is FAILURE. So a blob warm after
  5 s reads SUCCESS at 30 s, as on a real manager. ``answer_at_once=True`` shows the state live
  (fast unit tests); ``time_scale`` and ``clock`` are for this fake's own tests only.
* The state a refresh writes is PENDING, SUCCESS or FAILURE, derived from one job state per
  scheduler cluster as ``GetGroupJobState`` does (any FAILURE fails the job, any unfinished keeps it
  PENDING); ``result`` is ``{group_uuid, state, created_at, updated_at, job_states: [{task_uuid,
  task_name, state, results: [{success_tasks: [{url, hostname, ip}], failure_tasks: [{url, hostname,
  ip, description}], scheduler_cluster_id}], error, created_at, ttl}]}``. A finished job is removed
  ``job_ttl`` seconds after it finished (6 h by default), then answers 404 ``record not found``.

``get_task`` and ``delete_task`` jobs (``args.task_id``, or ``args.url`` whose id is computed as a
node does) run on the same refresh schedule. A get_task result lists, per cluster, the peers holding
the task (``GetTaskResponse``: ``peers[{id, hostname, ip, host_type, created_at, updated_at,
IsFinished}]``; the seed peer, while its file is in the cache). A delete_task job deletes the task
from the seed peer at once (its cached file and its record, so a later preheat downloads again), and
its result (``DeleteTaskResponse``: ``success_tasks[{hostname, ip, host_type}]``) shows on the schedule.

Each URL is really downloaded by a :class:`local.supernode.ReferenceSupernode` standing in for the
seed peers (with the job's headers; sha256 checked when the URL names a ``.../blobs/sha256:<hex>``
digest; ``filtered_query_params`` as its filter, so signed URLs of one object are one download), and
``cached_digests()`` lists what it holds. A failed download is reported the way the scheduler
reports it: with ``single_seed_peer`` (the default scope) the URL is only left out of a SUCCESS
result; with ``all_seed_peers``/``all_peers`` it is a failure task, and the job is FAILURE ("all
peers preheat failed: ...") when nothing succeeded.

The job rate limit is enforced as ``manager/middlewares/ratelimiter.go`` does: a create naming
``scheduler_cluster_ids`` takes a token from each named cluster's bucket (``job_rate_limit`` a second,
10 by default, bursts as large; ``None`` turns it off), else it is answered 429 with the text body
``rate limit exceeded`` once its body has been parsed; a create naming no cluster is not limited.
``admitted`` and ``rate_limited`` count both outcomes. ``tasks()`` lists the seed peers' tasks by the
task id a Dragonfly 2 node computes for each URL (``preheat.task_ids`` with the job's ``tag``,
``application``, ``piece_length``, ``filtered_query_params``, and the digest-based id when its args
carry ``enable_task_id_based_blob_digest``), so a test can check a node would hit them.

Test knobs reproduce what real managers answer when seed peers fail:

* ``fail_urls`` (url -> description): the job is SUCCESS but lists a failure task for the URL on every
  cluster's seed peer, and no success task (``all_seed_peers``/``all_peers`` partial failures).
* ``drop_urls``: the job is SUCCESS with no task at all for the URL (``single_seed_peer`` with ``urls``
  logs a failed URL and leaves it out of the result).
* ``error_urls`` (url -> error): the job is FAILURE with that ``job_states[].error``.
* ``finish_delay``: seconds before a job can finish; ``inject_errors(method, count, status)``: the next
  ``count`` job API requests of ``method`` answer ``status`` (500 by default) before doing anything.
* ``requests_seen``: every job API request as it arrived (method, path, Authorization, body), nothing
  redacted, so that a test asserting that no credential reached the manager can fail. ``refreshes``
  counts the states the poller wrote.

Run it alone with ``python -m local.dragonfly2_manager --port 8003 --cache-dir DIR`` (the token in
``PREHEAT_DRAGONFLY2_TOKEN``).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from time import monotonic
from types import FrameType, TracebackType
from typing import Any, Self

from local.background import BackgroundServer
from local.dragonfly2_http import ManagerHandler, ManagerServer
from local.dragonfly2_requests import Invalid, NotFound, node_task_id, parse_create
from local.dragonfly2_results import (
    JOB_FAILURE,
    JOB_SUCCESS,
    PENDING,
    Job,
    job_state,
    refresh_offsets,
    rfc3339,
    start_task_job,
    utcnow,
    without_query,
)
from local.supernode import ReferenceSupernode, TaskRecord, task_id_for

log = logging.getLogger("local.dragonfly2_manager")

DEFAULT_JOB_TTL = 6 * 3600.0

# manager/middlewares/ratelimiter.go: job creates naming scheduler clusters, per cluster.
DEFAULT_JOB_RATE_LIMIT = 10.0
RATE_LIMIT_MESSAGE = "rate limit exceeded"
_BEARER_RE = re.compile(r"^bearer\s+(\S+)$", re.IGNORECASE)


class FakeDragonfly2Manager:
    """An in-process fake Dragonfly 2 manager on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        cache_dir: Path,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clusters: Mapping[int, str] | None = None,
        inactive_tokens: Iterable[str] = (),
        fail_urls: Mapping[str, str] | None = None,
        drop_urls: Iterable[str] = (),
        error_urls: Mapping[str, str] | None = None,
        finish_delay: float = 0.0,
        job_ttl: float = DEFAULT_JOB_TTL,
        max_concurrent_downloads: int = 4,
        download_timeout: float = 30.0,
        job_rate_limit: float | None = DEFAULT_JOB_RATE_LIMIT,
        answer_at_once: bool = False,
        time_scale: float = 1.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """``answer_at_once``: GET shows a job's state as it is now, not as the poller last wrote it
        (fast unit tests of the driver). ``time_scale`` (multiplies the poller's schedule) and
        ``clock`` (seconds, read by the poller; tests then call :meth:`run_due_refreshes`) are for
        this fake's own tests only: the service's tests keep production's clock, or its own
        timeouts would no longer fall where they do against a real manager."""
        if not token:
            raise ValueError("the fake manager needs a token to check")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.answer_at_once = answer_at_once
        self._time_scale = time_scale
        self._clock = clock
        self._token = token
        self._inactive_tokens = frozenset(inactive_tokens)
        self._host = host
        self._port = port
        self.clusters: dict[int, str] = dict(clusters) if clusters else {1: "cluster-1"}
        self.fail_urls: dict[str, str] = dict(fail_urls or {})
        self.drop_urls: set[str] = set(drop_urls)
        self.error_urls: dict[str, str] = dict(error_urls or {})
        self.healthy = True
        self._finish_delay = finish_delay
        self._job_ttl = job_ttl
        # The seed peers: a reference supernode does the downloads (its own port goes unused).
        self.seed = ReferenceSupernode(
            cache_dir,
            host=host,
            max_concurrent_downloads=max_concurrent_downloads,
            finish_delay=finish_delay,
            download_timeout=download_timeout,
        )
        self._lock = threading.Lock()
        # The poller: (when, job id, try) of every refresh to come; woken by each create and by stop.
        self._due: list[tuple[float, int, int]] = []
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._poller: threading.Thread | None = None
        self.refreshes = 0  # states the poller wrote, for tests to count
        self._jobs: dict[int, Job] = {}
        self._next_id = 1
        self._requests_seen: list[dict[str, Any]] = []
        self._injected: dict[str, list[int]] = {}
        self.job_rate_limit = job_rate_limit
        self._buckets: dict[int, tuple[float, float]] = {}
        self.admitted = 0  # creates that named clusters and got past the rate limit
        self.rate_limited = 0  # creates answered 429
        self._node_tasks: dict[str, str] = {}  # Dragonfly 2 task id -> seed peer task id
        self._server: ManagerServer | None = None
        self._served: BackgroundServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self.seed.start()
        self._stopping = False
        self._poller = threading.Thread(target=self._poll_jobs, name="df2-manager-poller", daemon=True)
        self._poller.start()
        self._server = ManagerServer((self._host, self._port), ManagerHandler, self)
        self._served = BackgroundServer(self._server, "df2-manager-http", poll_interval=0.1)
        log.info("fake Dragonfly 2 manager listening on %s, cache %s", self.url, self.seed.cache_dir)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._served is not None:
            self._served.close()
            self._served = None
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        self.seed.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake manager is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- knobs and inspection for tests ----------------------------------------------------------

    def inject_errors(self, method: str, count: int, status: int = 500) -> None:
        """The next ``count`` job API requests of ``method`` (POST: create, GET: status) answer
        ``status`` without doing anything."""
        with self._lock:
            self._injected.setdefault(method.upper(), []).extend([status] * count)

    @property
    def requests_seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests_seen)

    def cached_digests(self) -> set[str]:
        """``sha256:<hex>`` of every file the seed peers hold."""
        return self.seed.cached_digests()

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The job as ``GET /oapi/v1/jobs/{id}`` would answer it (without counting as a request)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._render(job)

    def created_at(self, url: str) -> datetime | None:
        """When the first job carrying ``url`` was created (the schedule's time zero), for benchmarks."""
        with self._lock:
            return next((job.created_at for job in self._jobs.values() if url in job.request.urls), None)

    def forget(self, job_id: int) -> bool:
        """Remove a job, as the manager does 6 h after it finished."""
        with self._lock:
            return self._jobs.pop(job_id, None) is not None

    def tasks(self) -> dict[str, TaskRecord]:
        """Every URL's seed peer task, by the task id a Dragonfly 2 node computes for that URL (with
        the job's ``tag``, ``application``, ``piece_length`` and ``filtered_query_params``)."""
        with self._lock:
            node_tasks = dict(self._node_tasks)
        seed = self.seed.tasks()
        return {node_id: seed[seed_id] for node_id, seed_id in node_tasks.items() if seed_id in seed}

    def _admit(self, cluster_ids: Iterable[int]) -> bool:
        """The manager's job rate limiter: a token bucket per scheduler cluster named in the create
        (``job_rate_limit`` a second, bursts as large); a create needs a token of each."""
        if self.job_rate_limit is None:
            return True
        now = monotonic()
        with self._lock:
            buckets = []
            for cluster_id in cluster_ids:
                tokens, last = self._buckets.get(cluster_id, (self.job_rate_limit, now))
                tokens = min(self.job_rate_limit, tokens + (now - last) * self.job_rate_limit)
                buckets.append((cluster_id, tokens))
            if any(tokens < 1 for _, tokens in buckets):
                for cluster_id, tokens in buckets:
                    self._buckets[cluster_id] = (tokens, now)
                self.rate_limited += 1
                return False
            for cluster_id, tokens in buckets:
                self._buckets[cluster_id] = (tokens - 1, now)
            self.admitted += 1
            return True

    # -- the poller ------------------------------------------------------------------------------

    def run_due_refreshes(self) -> int:
        """Write the state of every job whose refresh is due by the clock now; how many were written.
        The poller thread does this on its own; a test on an injected clock calls it after moving
        the clock, and every refresh due by then is done when it returns."""
        with self._wake:
            return self._refresh_due()

    def _poll_jobs(self) -> None:
        with self._wake:
            while not self._stopping:
                self._refresh_due()
                if not self._due:
                    self._wake.wait()
                else:
                    self._wake.wait(max(0.0, self._due[0][0] - self._clock()))

    def _refresh_due(self) -> int:
        """manager/service/job.go's pollingJob for every job: each try writes the state the job is in
        then; a finished job is not polled again; after the last try an unfinished job is FAILURE.
        Called with the lock held."""
        offsets = refresh_offsets()
        written = 0
        while self._due and self._due[0][0] <= self._clock():
            _, job_id, attempt = heapq.heappop(self._due)
            job = self._jobs.get(job_id)
            if job is None:
                continue
            # The first try follows the create at once: the schedulers have not even received the
            # machinery task yet, whatever this fake's local downloads did meanwhile.
            state, result = self._observe(job) if attempt else (PENDING, None)
            if state == PENDING and attempt + 1 >= len(offsets):
                # retry-go gave up: the manager marks the job failed, its last result kept.
                state = JOB_FAILURE
                job.finished_at = monotonic()
            job.written = (state, result)
            written += 1
            self.refreshes += 1
            if state == PENDING:
                heapq.heappush(
                    self._due, (job.started + offsets[attempt + 1] * self._time_scale, job_id, attempt + 1)
                )
        if written:
            self._wake.notify_all()
        return written

    # -- the API ---------------------------------------------------------------------------------

    def authorize(self, authorization: str | None, query_token: str | None) -> tuple[int, Any] | None:
        """None when the token is good, else the answer (401 or 403)."""
        token = query_token
        if token is None and authorization:
            match = _BEARER_RE.match(authorization.strip())
            token = match.group(1) if match else None
        if token is not None and token in self._inactive_tokens:
            return HTTPStatus.FORBIDDEN, {"message": "Token is inactive"}
        if token != self._token:
            return HTTPStatus.UNAUTHORIZED, {"message": "Unauthorized"}
        return None

    def record(self, method: str, path: str, authorization: str | None, body: Any) -> None:
        """Keep the request as it arrived: a test that no credential reached the manager must see
        the credentials that did (this fake runs in tests only; it logs header names, never values)."""
        with self._lock:
            self._requests_seen.append(
                {"method": method, "path": path, "authorization": authorization, "body": body}
            )

    def injected(self, method: str) -> int | None:
        with self._lock:
            pending = self._injected.get(method)
            return pending.pop(0) if pending else None

    def create(self, body: Any) -> tuple[int, Any]:
        """The answer to a create: a JSON document, or text (the rate limiter's 429)."""
        try:
            request = parse_create(body, self.clusters)
        except Invalid as exc:
            return HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": str(exc)}
        except NotFound as exc:
            return HTTPStatus.NOT_FOUND, {"message": str(exc)}
        if request.cluster_ids and not self._admit(request.cluster_ids):
            return HTTPStatus.TOO_MANY_REQUESTS, RATE_LIMIT_MESSAGE
        cluster_ids = request.cluster_ids or tuple(sorted(self.clusters))
        if not cluster_ids:
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"message": "candidate schedulers not found"}
        seed_tasks: dict[str, str] = {}
        refused: dict[str, str] = {}
        if request.kind != "preheat":  # get_task, delete_task: no URL, a job on the same schedule
            with self._lock:
                seed_id = self._node_tasks.get(request.task_id)
            seed_tasks = {request.task_id: seed_id} if seed_id else {}
        for url in request.urls:
            if self._knob(url) is not None:
                continue
            try:
                node_id = node_task_id(url, request.args)
            except ValueError as exc:
                # The seed peer refuses a blob URL whose digest it cannot take: nothing is downloaded.
                refused[url] = f"invalid argument: {exc}"
                continue
            status, answer = self.seed.create(
                {"type": "file", "url": url, "headers": request.headers, "filter": "&".join(request.filters)}
            )
            if status not in (HTTPStatus.CREATED, HTTPStatus.ALREADY_REPORTED):
                message = answer.get("message") if isinstance(answer, dict) else None
                return HTTPStatus.INTERNAL_SERVER_ERROR, {"message": str(message or "seed peer refused")}
            # 201 (new or running) and 208 (finished) both name the task of the filtered URL.
            seed_tasks[url] = task_id_for(url, request.filters, "", request.headers)
            with self._lock:
                self._node_tasks[node_id] = seed_tasks[url]
        with self._lock:
            job_id = self._next_id
            self._next_id += 1
            job = Job(
                id=job_id,
                group_uuid=f"group_{uuid.uuid4()}",
                request=request,
                clusters=cluster_ids,
                task_uuids=tuple(f"task_{uuid.uuid4()}" for _ in cluster_ids),
                created_at=utcnow(),
                ready_at=monotonic() + self._finish_delay,
                started=self._clock(),
                seed_tasks=seed_tasks,
                refused=refused,
            )
            self._jobs[job_id] = job
            start_task_job(job, self.seed, seed_tasks.get(request.task_id))
            answer = self._render(job, live=False)
            if not self.answer_at_once:
                # The poller's first try follows the create at once.
                heapq.heappush(self._due, (job.started, job_id, 0))
                self._wake.notify_all()
        log.info(
            "%s job %s created for %s in scheduler clusters %s (header names: %s)",
            request.kind,
            job_id,
            ", ".join(without_query(url) for url in request.urls) or request.task_id,
            list(cluster_ids),
            sorted(request.headers),
        )
        return HTTPStatus.OK, answer

    def get(self, raw_id: str) -> tuple[int, Any]:
        if not raw_id.isdigit():
            return HTTPStatus.UNPROCESSABLE_ENTITY, {
                "errors": f'strconv.ParseUint: parsing "{raw_id:.40}": invalid syntax'
            }
        with self._lock:
            job = self._jobs.get(int(raw_id))
            if job is not None and self._expired(job):
                del self._jobs[job.id]
                job = None
            if job is None:
                return HTTPStatus.NOT_FOUND, {"message": "record not found"}
            return HTTPStatus.OK, self._render(job)

    def delete(self, raw_id: str) -> tuple[int, Any]:
        if not raw_id.isdigit():
            return HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": "invalid job id"}
        if not self.forget(int(raw_id)):
            return HTTPStatus.NOT_FOUND, {"message": "record not found"}
        return HTTPStatus.OK, None

    # -- job state -------------------------------------------------------------------------------

    def _knob(self, url: str) -> tuple[str, str] | None:
        """The test override for ``url`` (matched with or without its query), if any."""
        for candidate in (url, without_query(url)):
            if candidate in self.error_urls:
                return "error", self.error_urls[candidate]
            if candidate in self.fail_urls:
                return "fail", self.fail_urls[candidate]
            if candidate in self.drop_urls:
                return "drop", ""
        return None

    def _expired(self, job: Job) -> bool:
        return job.finished_at is not None and monotonic() - job.finished_at >= self._job_ttl

    def _observe(self, job: Job) -> tuple[str, dict[str, Any]]:
        """The job's state and result as they are now (what a poller's try would write); called with
        the lock held. A job seen finished starts its time to live."""
        job_states = [
            job_state(job, index, cluster, self.seed, self._knob)
            for index, cluster in enumerate(job.clusters)
        ]
        states = [s["state"] for s in job_states]
        state = PENDING
        if JOB_FAILURE in states:
            state = JOB_FAILURE
        elif all(s == JOB_SUCCESS for s in states):
            state = JOB_SUCCESS
        if state != PENDING and job.finished_at is None:
            job.finished_at = monotonic()
            job.updated_at = utcnow()
        result = {
            "group_uuid": job.group_uuid,
            "state": state,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "job_states": job_states,
        }
        return state, result

    def _render(self, job: Job, live: bool = True) -> dict[str, Any]:
        """The job object; called with the lock held. Its state and result are what the poller last
        wrote (PENDING and null before its first try), or the live ones with ``answer_at_once``."""
        state, result = PENDING, None
        if live and self.answer_at_once:
            state, result = self._observe(job)
        elif live and job.written is not None:
            state, result = job.written
        return {
            "id": job.id,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "is_del": 0,
            "task_id": job.group_uuid,
            "bio": "",
            "type": job.request.kind,
            "state": state,
            "args": dict(job.request.args),
            "result": result,
            "user_id": 0,
            "seed_peer_clusters": [],
            "scheduler_clusters": [
                {
                    "id": cluster,
                    "created_at": rfc3339(job.created_at),
                    "updated_at": rfc3339(job.created_at),
                    "is_del": 0,
                    "name": self.clusters.get(cluster, f"cluster-{cluster}"),
                }
                for cluster in job.clusters
            ],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.dragonfly2_manager",
        description="Run a fake Dragonfly 2 manager (a local tool, not for production). "
        "The token it accepts is read from PREHEAT_DRAGONFLY2_TOKEN.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--cache-dir", type=Path, default=Path(".dragonfly2-cache"))
    parser.add_argument("--clusters", default="1", help="scheduler cluster ids, comma-separated")
    parser.add_argument("--finish-delay", type=float, default=0.0)
    parser.add_argument(
        "--answer-at-once",
        action="store_true",
        help="show a job's state as it is now, not on the manager's 0/30/90/210 s... refresh schedule",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = os.environ.get("PREHEAT_DRAGONFLY2_TOKEN", "").strip()
    if not token:
        parser.error("set PREHEAT_DRAGONFLY2_TOKEN to the token the fake manager should accept")
    try:
        cluster_ids = [int(part) for part in args.clusters.split(",") if part.strip()]
    except ValueError:
        parser.error("--clusters must be comma-separated numbers")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with FakeDragonfly2Manager(
        args.cache_dir,
        token,
        host=args.host,
        port=args.port,
        clusters={cluster_id: f"cluster-{cluster_id}" for cluster_id in cluster_ids},
        finish_delay=args.finish_delay,
        answer_at_once=args.answer_at_once,
    ):
        while not stop.wait(0.5):
            pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
