"""The Dragonfly 1 supernode driver: ``GET /_ping``, ``POST /preheats``, ``GET /preheats/{id}``.

It speaks the API the Go and Java supernodes shipped (see the project's reference notes), and reads
their answers the way Harbor's Dragonfly 1 driver does: ``ID`` as a string, ``status`` ignoring case,
and 208 (Go) or 409 (Java) "already exists" as a task that is, or soon will be, warm.

Blob headers are credentials: they go in the create body and nowhere else. No message this module
builds quotes them, and text a supernode answers with is scrubbed of them before it is quoted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import requests.adapters

from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Blob, BlobState
from preheat.ports import SupernodeTask
from preheat.settings import Settings

DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.2
MAX_PING_THREADS = 16
# As many pooled connections as the worker makes calls at once (worker.MAX_PARALLEL_SUPERNODE_CALLS).
POOL_SIZE = 64
MAX_QUOTED_CHARS = 300

# What ``create`` answers when a supernode says "already exists" without saying which task: there is
# nothing to poll, and Harbor counts that answer as warm, so the blob is SUCCESS under this id.
UNKNOWN_TASK_ID = ""

_PENDING = frozenset({"WAITING", "RUNNING"})
_EXISTING_ID_RE = re.compile(r"\bid\s*[:=]\s*([A-Za-z0-9._-]+)", re.IGNORECASE)
_REDACTED = "<redacted>"


class Dragonfly1Driver:
    """The ``SupernodeDriver`` for Dragonfly 1 supernodes (``settings.supernodes``).

    ``create`` answers PENDING with the supernode's task id; "already exists" (208, or 409 saying
    so) is checked with ``status`` under the id the answer names, and counts as SUCCESS under
    ``UNKNOWN_TASK_ID`` when it names none. Other 4xx are PermanentFailure; connection errors,
    timeouts, 429 and 5xx are retried ``attempts`` times, ``backoff_seconds`` doubling between
    tries, then raised as TransientFailure.
    """

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._settings = settings
        self._session = session if session is not None else _pooled_session()
        self._attempts = attempts
        self._backoff_seconds = backoff_seconds
        self._sleep = sleep

    @property
    def targets(self) -> tuple[str, ...]:
        return self._settings.supernodes

    def ping(self) -> Mapping[str, str | None]:
        targets = self.targets
        if not targets:
            return {}
        # In parallel so that one dead supernode costs the health check one timeout, not one each.
        with ThreadPoolExecutor(min(len(targets), MAX_PING_THREADS), thread_name_prefix="df1-ping") as pool:
            return dict(zip(targets, pool.map(self._ping_one, targets), strict=True))

    def _ping_one(self, target: str) -> str | None:
        timeout = self._settings.check_timeout_seconds
        try:
            response = self._session.get(f"{target}/_ping", timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return _failure_reason(exc, timeout)
        with response:
            return None if response.status_code == 200 else f"HTTP {response.status_code}"

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        body: dict[str, Any] = {"type": "file", "url": blob.url}
        if blob.headers:
            body["headers"] = blob.headers.reveal()
        if blob.filter:
            body["filter"] = "&".join(blob.filter)
        secrets = tuple(blob.headers.values())
        # Retrying a create is safe: the supernode derives the task id from the URL, so a repeat
        # joins the task the lost attempt may have started.
        response = self._send("POST", target, "/preheats", f"accept the preheat of {blob.label}", json=body)
        with response:
            code = response.status_code
            answer = _json(response)
            message = _message(answer, response, secrets)
            if code in (200, 201):
                task_id = answer.get("ID") if isinstance(answer, dict) else None
                if not isinstance(task_id, str) or not task_id:
                    raise PermanentFailure(
                        f"supernode {_display(target)} answered HTTP {code} to the preheat of {blob.label} "
                        f'without a task "ID": {message}'
                    )
                return SupernodeTask(task_id, BlobState.PENDING)
            if code == 208 or (code == 409 and "already exist" in message.lower()):
                existing = _existing_id(answer, message)
            else:
                raise PermanentFailure(
                    f"supernode {_display(target)} refused the preheat of {blob.label}: "
                    f"HTTP {code}: {message}"
                )
        if existing is None:
            return SupernodeTask(UNKNOWN_TASK_ID, BlobState.SUCCESS)
        # "Already exists" may mean still running (Go before 208 was finished-only), or failed for
        # good (Java never restarts a finished task): ask rather than assume it is warm.
        return self.status(target, existing)

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        if supernode_task_id == UNKNOWN_TASK_ID:
            return SupernodeTask(UNKNOWN_TASK_ID, BlobState.SUCCESS)
        path = f"/preheats/{quote(supernode_task_id, safe='')}"
        response = self._send("GET", target, path, f"answer the status of task {supernode_task_id}")
        with response:
            code = response.status_code
            answer = _json(response)
            if code == 404:
                return SupernodeTask(
                    supernode_task_id,
                    BlobState.FAILED,
                    f"supernode {_display(target)} no longer knows task {supernode_task_id} (restarted?)",
                )
            if code != 200 or not isinstance(answer, dict):
                raise PermanentFailure(
                    f"supernode {_display(target)} answered HTTP {code} to the status of task "
                    f"{supernode_task_id}: {_message(answer, response)}"
                )
        status = str(answer.get("status", "")).strip().upper()
        if status in _PENDING:
            return SupernodeTask(supernode_task_id, BlobState.PENDING)
        if status == "SUCCESS":
            return SupernodeTask(supernode_task_id, BlobState.SUCCESS)
        if status == "FAILED":
            reason = str(answer.get("errorMsg") or "").strip() or "no reason given"
            return SupernodeTask(
                supernode_task_id,
                BlobState.FAILED,
                f"supernode {_display(target)} failed task {supernode_task_id}: {_truncate(reason)}",
            )
        # An unknown status would otherwise be polled until the task deadline; fail it now, loudly.
        return SupernodeTask(
            supernode_task_id,
            BlobState.FAILED,
            f"supernode {_display(target)} answered an unknown status {_truncate(status)!r} "
            f"for task {supernode_task_id}",
        )

    def _send(self, method: str, target: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        """The first answer that is neither 5xx nor 429; those, connection errors and timeouts are
        retried with backoff, then raised as TransientFailure so that the worker tries again later."""
        timeout = self._settings.supernode_timeout_seconds
        reason = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                self._sleep(self._backoff_seconds * 2 ** (attempt - 2))
            try:
                # Redirects are not followed: the supernode API never redirects, and a POST body
                # carries credentials that must not be replayed to wherever a Location points.
                response = self._session.request(
                    method, f"{target}{path}", timeout=timeout, allow_redirects=False, **kwargs
                )
            except requests.RequestException as exc:
                reason = _failure_reason(exc, timeout)
                continue
            if response.status_code < 500 and response.status_code != 429:
                return response
            with response:
                reason = f"HTTP {response.status_code}"
        raise TransientFailure(
            f"supernode {_display(target)} did not {what} after {self._attempts} attempts: {reason}"
        )


def _failure_reason(exc: requests.RequestException, timeout: float) -> str:
    """A short reason built from the exception's type, never its text (which quotes the request)."""
    if isinstance(exc, requests.Timeout):
        return f"timed out after {timeout}s"
    if isinstance(exc, requests.ConnectionError):
        cause = repr(exc).lower()
        if "refused" in cause:
            return "connection refused"
        if "name or service not known" in cause or "nodename nor servname" in cause or "resolution" in cause:
            return "host not found"
        return "connection failed"
    return f"request failed ({type(exc).__name__})"


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(answer: Any, response: requests.Response, secrets: tuple[str, ...] = ()) -> str:
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
    text = text or response.text.strip()
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _truncate(text) if text else "(empty body)"


def _existing_id(answer: Any, message: str) -> str | None:
    if isinstance(answer, dict):
        task_id = answer.get("ID")
        if isinstance(task_id, str) and task_id:
            return task_id
    match = _EXISTING_ID_RE.search(message)
    return match.group(1) if match else None


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}..."


def _display(target: str) -> str:
    """The target without user:password, should the configured base URL carry them."""
    parts = urlsplit(target)
    if parts.username is None and parts.password is None:
        return target
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _pooled_session() -> requests.Session:
    """A session whose pool keeps a connection per concurrent call: the worker talks to the
    supernodes from many threads, and requests' default pool of 10 would drop and reopen the rest."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
