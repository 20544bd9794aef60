"""The Dragonfly 1 supernode driver: ``GET /_ping``, ``POST /preheats``, ``GET /preheats/{id}``.

It speaks the API the Go and Java supernodes shipped (see the project's reference notes), and reads
their answers the way Harbor's Dragonfly 1 driver does: ``ID`` as a string, ``status`` ignoring case,
and 208 (Go) or 409 (Java) "already exists" as a task that is, or soon will be, warm.

Blob headers are credentials: they go in the create body and nowhere else. No message this module
builds quotes them, and text a supernode answers with is scrubbed of every form of them (raw, each
word, a Basic header's user and password) before it is quoted. A task's status answer carries no
headers, so the driver remembers what it sent for each task (in memory, for the task's lifetime) to
scrub that task's ``errorMsg``; a Bearer or Basic credential, a JWT or a URL signature is scrubbed
from any text, known or not.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from preheat.adapters import dragonfly1_tasks
from preheat.adapters.expiring_cache import ExpiringCache
from preheat.adapters.http import HttpClient, Response
from preheat.adapters.http_target import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_SECONDS,
    HttpTargetDriver,
    display_target,
    json_body,
)
from preheat.adapters.quoting import scrub_server_text, truncate
from preheat.errors import PermanentFailure
from preheat.models import Blob, BlobProgress, BlobState, Targeting
from preheat.ports import Holding, SupernodeTask
from preheat.settings import Settings
from preheat.task_ids import dragonfly1_task_id

# A supernode task id goes into a URL path and into the task's record: the Go supernode's are 64
# hex digits, the Java one's shorter; an id beyond this is not one.
MAX_TASK_ID_CHARS = 256

# What ``create`` answers when a supernode says "already exists" without saying which task: there is
# nothing to poll, and Harbor counts that answer as warm, so the blob is SUCCESS under this id.
UNKNOWN_TASK_ID = ""
# Tasks whose sent credentials a warm driver remembers, to scrub their status answers.
MAX_REMEMBERED_TASKS = 4096

_PENDING = frozenset({"WAITING", "RUNNING"})
_EXISTING_ID_RE = re.compile(r"\bid\s*[:=]\s*([A-Za-z0-9._-]+)", re.IGNORECASE)


class Dragonfly1Driver(HttpTargetDriver):
    """The ``SupernodeDriver`` for Dragonfly 1 supernodes (``settings.supernodes``).

    ``create`` answers PENDING with the supernode's task id; "already exists" (208, or 409 saying
    so) is checked with ``status`` under the id the answer names, and counts as SUCCESS under
    ``UNKNOWN_TASK_ID`` when it names none. Other 4xx are PermanentFailure; connection errors,
    timeouts, 429 and 5xx are retried ``attempts`` times, ``backoff_seconds`` doubling between
    tries, then raised as TransientFailure.
    """

    SUBJECT = "supernode"
    PING_PATH = "/_ping"
    PING_THREAD_PREFIX = "df1-ping"

    def __init__(
        self,
        settings: Settings,
        http: HttpClient | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(settings, http, attempts=attempts, backoff_seconds=backoff_seconds, sleep=sleep)
        # The header values sent for each (target, task id): its errorMsg may quote them.
        self._sent: ExpiringCache[tuple[str, str], tuple[str, ...]] = ExpiringCache(
            time.monotonic, MAX_REMEMBERED_TASKS
        )

    def _remember(self, target: str, task_id: str, secrets: tuple[str, ...]) -> None:
        if secrets and task_id != UNKNOWN_TASK_ID:
            # Two requests of one URL share the supernode's task: keep both callers' values.
            known = self._sent.get((target, task_id)) or ()
            merged = tuple(dict.fromkeys((*known, *secrets)))
            self._sent.put((target, task_id), merged, self._settings.task_timeout_seconds)

    def _filter(self, blob: Blob) -> tuple[str, ...]:
        """The blob's signature parameters, then those the nodes' dfget is configured to filter."""
        return tuple(dict.fromkeys((*blob.filter, *self._settings.dragonfly1_filter)))

    def node_task_id(self, blob: Blob) -> str:
        return dragonfly1_task_id(blob.url, self._filter(blob), self._settings.dragonfly1_identifier)

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        body: dict[str, Any] = {"type": "file", "url": blob.url}
        if blob.headers:
            body["headers"] = blob.headers.reveal()
        filter_params = self._filter(blob)
        if filter_params:
            body["filter"] = "&".join(filter_params)
        if self._settings.dragonfly1_identifier:
            body["identifier"] = self._settings.dragonfly1_identifier
        secrets = tuple(blob.headers.values())
        # Retrying a create is safe: the supernode derives the task id from the URL, so a repeat
        # joins the task the lost attempt may have started.
        response = self._send_with_retries(
            "POST", target, "/preheats", f"accept the preheat of {blob.label}", json=body
        )
        with response:
            code = response.status_code
            answer = json_body(response)
            message = _message(answer, response, secrets)
            if code in (200, 201):
                task_id = answer.get("ID") if isinstance(answer, dict) else None
                if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID_CHARS:
                    raise PermanentFailure(
                        f"supernode {display_target(target)} answered HTTP {code} to the preheat of "
                        f'{blob.label} without a task "ID": {message}'
                    )
                self._remember(target, task_id, secrets)
                return SupernodeTask(task_id, BlobState.PENDING)
            if code == 208 or (code == 409 and "already exist" in message.lower()):
                existing = _existing_id(answer, message)
            else:
                raise PermanentFailure(
                    f"supernode {display_target(target)} refused the preheat of {blob.label}: "
                    f"HTTP {code}: {message}"
                )
        if existing is None:
            return SupernodeTask(UNKNOWN_TASK_ID, BlobState.SUCCESS)
        self._remember(target, existing, secrets)
        # "Already exists" may mean still running (Go before 208 was finished-only), or failed for
        # good (Java never restarts a finished task): ask rather than assume it is warm.
        return self.status(target, existing)

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        if supernode_task_id == UNKNOWN_TASK_ID:
            return SupernodeTask(UNKNOWN_TASK_ID, BlobState.SUCCESS)
        path = f"/preheats/{quote(supernode_task_id, safe='')}"
        response = self._send_with_retries(
            "GET", target, path, f"answer the status of task {supernode_task_id}"
        )
        with response:
            code = response.status_code
            answer = json_body(response)
            if code == 404:
                return SupernodeTask(
                    supernode_task_id,
                    BlobState.FAILED,
                    f"supernode {display_target(target)} no longer knows task {supernode_task_id} "
                    "(restarted?)",
                )
            secrets = self._sent.get((target, supernode_task_id)) or ()
            if code != 200 or not isinstance(answer, dict):
                raise PermanentFailure(
                    f"supernode {display_target(target)} answered HTTP {code} to the status of task "
                    f"{supernode_task_id}: {_message(answer, response, secrets)}"
                )
        status = str(answer.get("status", "")).strip().upper()
        if status in _PENDING:
            return SupernodeTask(supernode_task_id, BlobState.PENDING)
        if status == "SUCCESS":
            return SupernodeTask(supernode_task_id, BlobState.SUCCESS)
        if status == "FAILED":
            said = str(answer.get("errorMsg") or "").strip()
            reason = scrub_server_text(said, secrets) or "no reason given"
            return SupernodeTask(
                supernode_task_id,
                BlobState.FAILED,
                f"supernode {display_target(target)} failed task {supernode_task_id}: {truncate(reason)}",
            )
        # An unknown status would otherwise be polled until the task deadline; fail it now, loudly.
        return SupernodeTask(
            supernode_task_id,
            BlobState.FAILED,
            f"supernode {display_target(target)} answered an unknown status {truncate(status)!r} "
            f"for task {supernode_task_id}",
        )

    def holders(self, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
        """Each supernode's task API, in parallel (see ``dragonfly1_tasks``); a supernode is its
        own one peer, whatever the targeting (a Dragonfly 2 notion)."""
        return dragonfly1_tasks.in_parallel(lambda blob: dragonfly1_tasks.holding(self, blob), blobs)

    def evict(self, blobs: Sequence[BlobProgress]) -> list[str]:
        return dragonfly1_tasks.in_parallel(lambda blob: dragonfly1_tasks.evict(self, blob), blobs)


def _message(answer: Any, response: Response, secrets: tuple[str, ...] = ()) -> str:
    """What the supernode said: Go's ``message``, Java's ``msg``, else the start of the body.

    A supernode that echoes the request back must not leak it through our messages, so ``secrets``
    are replaced before the text is cut (a cut could leave half a secret that no longer matches)."""
    text = ""
    if isinstance(answer, dict):
        for key in ("message", "msg", "error", "errorMsg"):
            value = answer.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
    text = scrub_server_text(text or response.text.strip(), secrets)
    return truncate(text) if text else "(empty body)"


def _existing_id(answer: Any, message: str) -> str | None:
    if isinstance(answer, dict):
        task_id = answer.get("ID")
        if isinstance(task_id, str) and task_id and len(task_id) <= MAX_TASK_ID_CHARS:
            return task_id
    match = _EXISTING_ID_RE.search(message)
    return match.group(1) if match else None
