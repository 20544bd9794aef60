"""The domain service every entry point calls: submit a preheat, read a task, probe the supernodes."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from preheat.adapters.storage_signatures import redact_url
from preheat.errors import ClaimHeld, DependencyFailure, InvalidRequest, TaskNotFound
from preheat.handover import check_targeting
from preheat.models import (
    PreheatRequest,
    PreheatType,
    Step,
    Task,
    TaskQuery,
    TaskStatus,
    WorkerMessage,
    is_task_id,
    utcnow,
)
from preheat.network import check_request
from preheat.ports import EventPublisher, SupernodeDriver, TaskQueue, TaskStore
from preheat.settings import Settings

logger = logging.getLogger(__name__)

MAX_CLAIM_ATTEMPTS = 3
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Keys the listing cursor's MAC, derived from the dedup key so that a deployment needs no new secret.
CURSOR_KEY_LABEL = b"preheat list cursor v1"
CURSOR_MAC_BYTES = 16


def new_task_id() -> str:
    return str(uuid.uuid4())


JOB_ALIAS_PREFIX = "job#"
JOB_ID_MAX = (1 << 52) - 1  # 13 hex digits: exact in a float64, so JSON parsers of any language keep it


def job_id_candidates(task_id: str) -> list[int]:
    """The integers a task may be known by as a Dragonfly 2 job, in order of preference (each at
    most 2**52 - 1)."""
    digits = task_id.replace("-", "")
    return [n for n in (int(digits[:13], 16), int(digits[-13:], 16)) if n]


class PreheatService:
    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        id_factory: Callable[[], str] = new_task_id,
        dedup_key: Callable[[], bytes] | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        self._events = events
        self._store = store
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self._new_id = id_factory
        self._dedup_key = dedup_key

    def submit(self, request: PreheatRequest) -> Task:
        """Record the task as RUNNING and queue its first step; or, when an identical request is
        still RUNNING, answer that task instead of starting another.

        Identical means the same type, normalised URL, platforms and credentials (compared by a
        keyed hash, never stored). The task and its claim on the request are written in one
        conditional transaction, so concurrent arrivals cannot both start a task; a claim whose
        task has finished (or died) is taken over, conditionally on its holder, so tags that move
        are preheated again.

        If the queue refuses the message the task is marked FAIL at once: a RUNNING task that no
        worker will ever pick up would otherwise sit there until its deadline.

        A URL the outbound policy refuses without DNS (scheme, a literal private address, a host
        off PREHEAT_ALLOWED_REGISTRIES) is an InvalidRequest; names are judged by the worker.
        """
        check_request(request, self._settings)
        if request.targeting and self._settings.supernode_api == "dragonfly1":
            named = ", ".join(f"'{name}'" for name in request.targeting.to_api())
            raise InvalidRequest(
                f"{named}: the target has no such feature: Dragonfly 1 supernodes take no scope, clusters "
                "or peers (they apply to PREHEAT_SUPERNODE_API=dragonfly2); leave them out"
            )
        # Broad stored credentials go to the peers: a caller must not pick which hosts those are.
        check_targeting(request.targeting, self._settings)
        if request.targeting.cluster_ids and self._settings.supernode_api == "dragonfly2-scheduler":
            # Each scheduler serves one cluster: the clusters are the schedulers PREHEAT_SUPERNODES lists.
            raise InvalidRequest(
                "'clusterIds': the target has no such feature: a scheduler serves its own cluster "
                "(PREHEAT_SUPERNODES lists the schedulers to preheat through); leave it out"
            )
        now = self._clock()
        platforms = self._platforms_for(request)
        # A signature or token in the URL is a credential: the task (its item, the listing, status
        # answers, events, logs) keeps the URL redacted; the worker gets it whole in the start message.
        shown_url = redact_url(request.url)
        task = Task(
            task_id=self._new_id(),
            type=request.type,
            url=shown_url,
            status=TaskStatus.RUNNING,
            created_at=now,
            deadline=now + timedelta(seconds=self._settings.task_timeout_seconds),
            platforms=platforms,
            targeting=request.targeting,
            # The first check one period after the task's creation, on the service's clock.
            keep_warm=request.keep_warm
            and replace(request.keep_warm, next_check_at=now + request.keep_warm.every),
            callback_token=request.task_token,
        )
        # A request with a task token or keepWarm starts its own task: answering it with another
        # task would leave its execution waiting forever, or its content unkept.
        own = request.task_token is not None or request.keep_warm is not None
        existing = self._create_unless_running(task, None if own else self._claim_for(request, platforms))
        if existing is not None:
            return existing
        try:
            whole = request.url if shown_url != request.url else ""
            self._queue.send(WorkerMessage(task.task_id, Step.START, headers=request.headers, url=whole))
        except DependencyFailure as exc:
            failed = replace(
                task, status=TaskStatus.FAIL, finished_at=self._clock(), message=f"could not queue: {exc}"
            )
            # Should this write fail too, the deadline check in get() still ends the task as FAIL.
            with contextlib.suppress(DependencyFailure):
                if self._store.save(failed, expected_check_seq=task.check_seq):
                    self._announce(failed)
            raise
        return task

    def _create_unless_running(self, task: Task, claim: str | None) -> Task | None:
        """Create ``task``; or return the RUNNING task that holds ``claim``."""
        replaces: str | None = None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            try:
                self._store.create(task, claim=claim, replaces=replaces)
                return None
            except ClaimHeld as held:
                holder = self._store.get(held.task_id) if held.task_id else None
                if (
                    holder is not None
                    and holder.status is TaskStatus.RUNNING
                    and not holder.is_expired(self._clock())
                ):
                    return holder
                replaces = held.task_id  # finished, expired or vanished: take the claim over
        raise DependencyFailure("could not claim the request: it changed hands too often, try again")

    def _claim_for(self, request: PreheatRequest, platforms: tuple[str, ...]) -> str | None:
        if self._dedup_key is None:
            return None
        url = str(request.image) if request.image is not None else request.url
        # A keyed hash: equal credentials give equal claims, yet the table never holds anything a
        # reader could test guesses of the credentials against.
        credentials = hmac.new(
            self._dedup_key(),
            json.dumps(sorted((name.lower(), value) for name, value in request.headers.items())).encode(),
            hashlib.sha256,
        ).hexdigest()
        identity: list[Any] = [request.type.value, url, sorted(platforms), credentials]
        if request.targeting:
            # Only when given, so that the claims of requests without targeting stay as they were.
            identity.append(request.targeting.to_api())
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def _platforms_for(self, request: PreheatRequest) -> tuple[str, ...]:
        if request.type is not PreheatType.IMAGE:
            return ()
        if request.platforms:
            return tuple(str(platform) for platform in request.platforms)
        return self._settings.platforms

    def list_tasks(
        self,
        status: str | None = None,
        type: str | None = None,
        limit: str | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Task], str | None]:
        """A page of tasks, newest first, and the cursor of the next page (None at the end).

        Takes the query's raw strings; a bad one is an InvalidRequest saying what is allowed. The
        cursor is opaque to callers and carries a MAC: a forged or altered one, or one used with
        other filters than the page it came from, is refused rather than read.
        """
        wanted_status = _choice(status, "status", TaskStatus)
        wanted_type = _choice(type, "type", PreheatType)
        size = _page_size(limit)
        after = self._open_cursor(cursor, wanted_status, wanted_type) if cursor is not None else None
        now = self._clock()
        page = self._store.list_tasks(TaskQuery(size, wanted_status, wanted_type, after), now=now)
        tasks = [self._as_read(task, now) for task in page.tasks]
        following = None if page.after is None else self._seal_cursor(page.after, wanted_status, wanted_type)
        return tasks, following

    def _cursor_key(self) -> bytes:
        key = self._dedup_key() if self._dedup_key is not None else b"preheat-unkeyed"
        return hmac.new(key, CURSOR_KEY_LABEL, hashlib.sha256).digest()

    def _cursor_mac(self, payload: bytes) -> bytes:
        return hmac.new(self._cursor_key(), payload, hashlib.sha256).digest()[:CURSOR_MAC_BYTES]

    def _seal_cursor(self, after: str, status: TaskStatus | None, type: PreheatType | None) -> str:
        payload = json.dumps({"a": after, "s": status, "t": type}, separators=(",", ":")).encode()
        return _b64(payload) + "." + _b64(self._cursor_mac(payload))

    def _open_cursor(self, cursor: str, status: TaskStatus | None, type: PreheatType | None) -> str:
        refused = InvalidRequest(
            "'cursor' is not one this service gave out: pass the 'next' of the previous page as it is"
        )
        payload_text, _, mac_text = cursor.partition(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise refused from None
        if not hmac.compare_digest(mac, self._cursor_mac(payload)):
            raise refused
        fields = json.loads(payload)
        if fields.get("s") != status or fields.get("t") != type:
            raise InvalidRequest(
                "'cursor' belongs to a listing with other filters: keep 'status' and 'type' as they were "
                "for the page that gave it, or start again without a cursor"
            )
        after: str = fields["a"]
        return after

    def _as_read(self, task: Task, now: datetime) -> Task:
        """What a reader is told (as get() tells it, without writing): FAIL "timed out" past the deadline."""
        if not task.is_expired(now):
            return task
        return replace(
            task, status=TaskStatus.FAIL, finished_at=task.deadline, message=task.timed_out_message()
        )

    def get(self, task_id: str) -> Task:
        if not is_task_id(task_id):
            raise InvalidRequest(
                f"taskId {task_id[:80]!r} is not a task id: use the 'taskId' that POST /api/preheat returned"
            )
        task = self._store.get(task_id)
        if task is None:
            raise TaskNotFound(f"no preheat task with id {task_id} (unknown, or expired after its retention)")
        if task.is_expired(self._clock()):
            # The answer must not say RUNNING past the deadline even if no worker is left to notice;
            # the write is conditional, so a worker concluding at this moment keeps its verdict.
            expired = task.timed_out()
            if self._store.save(expired, expected_check_seq=task.check_seq):
                self._announce(expired)
                return expired
            return self._store.get(task_id) or expired
        return task

    def job_id_for(self, task: Task) -> int:
        """The task's integer job id (a Dragonfly 2 job id is a JSON integer, while tasks are
        UUIDs): taken from the task's UUID, its first 13 hex digits or its last 13 should those
        name another task, and recorded as an alias item ``job#<int>`` beside the task, so a job
        costs one write more than a task. Idempotent for a task that already has one, as when an
        identical running request answers the same task."""
        for candidate in job_id_candidates(task.task_id):
            if self._store.put_alias(f"{JOB_ALIAS_PREFIX}{candidate}", task):
                return candidate
        raise DependencyFailure("could not give the task a job id: try again")

    def get_job(self, job_id: str) -> Task:
        """The task a job id (as the caller wrote it) names; TaskNotFound when none."""
        task_id = None
        if job_id.isdigit() and 0 < int(job_id) <= JOB_ID_MAX:
            task_id = self._store.get_alias(f"{JOB_ALIAS_PREFIX}{int(job_id)}")
        if task_id is None:
            raise TaskNotFound("record not found")
        return self.get(task_id)

    def _announce(self, task: Task) -> None:
        """The completion event of a task this service ended. A reader must get its answer even
        when EventBridge fails: the failure is logged, and a check message still on its way for the
        task announces it again when it finds the task ended (see Worker.handle)."""
        if self._events is None:
            return
        try:
            self._events.task_finished(task)
        except DependencyFailure as exc:
            logger.error("task %s ended %s, but its event was not put: %s", task.task_id, task.status, exc)


def _choice(raw: str | None, name: str, allowed: type[TaskStatus] | type[PreheatType]) -> Any:
    if raw is None:
        return None
    for member in allowed:
        if raw == member.value:
            return member
    names = "|".join(member.value for member in allowed)
    raise InvalidRequest(f"'{name}' must be one of {names}, got {raw[:32]!r}")


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_PAGE_SIZE}, got {raw[:32]!r}")
    return int(raw)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) > 2048:
        raise ValueError("bad length")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unreachable_supernodes(driver: SupernodeDriver) -> Mapping[str, str]:
    """Each supernode that did not answer its ping, with why; empty when all are fine."""
    if not driver.targets:
        return {"(none)": "no supernodes configured: set PREHEAT_SUPERNODES"}
    return {target: reason for target, reason in driver.ping().items() if reason is not None}
