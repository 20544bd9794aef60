"""HTTP plumbing shared by the supernode drivers (Dragonfly 1 supernodes, Dragonfly 2 managers).

``HttpTargetDriver`` holds what both drivers do the same way: the configured targets, the parallel
health ping of every one, and the send-with-retries loop (connection errors, timeouts, 429 and 5xx
retried with backoff, then a TransientFailure naming the target). The functions below read answers
and describe failures without quoting a request's text. What each API means by its answers stays in
its driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from preheat.adapters.http import (
    DEFAULT_MAX_BODY,
    BodyTooLarge,
    HttpClient,
    RequestError,
    Response,
)
from preheat.adapters.quoting import failure_reason
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Blob, BlobProgress, Targeting
from preheat.ports import SupernodeTask
from preheat.retry import Jitter, RetryPolicy, parse_retry_after
from preheat.settings import Settings

DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.2
MAX_PING_THREADS = 16
# Pooled connections for the calls the worker makes at once: up to
# dispatch.MAX_PARALLEL_SUPERNODE_CALLS per step, with a batch's records running side by side.
POOL_SIZE = 128


class Throttled(Exception):
    """A 429 answer the caller asked to handle itself (see ``_send_with_retries``)."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class HttpTargetDriver:
    """The base of a driver that talks HTTP to each of ``settings.supernodes``.

    A subclass names what a target is (``SUBJECT``, as messages call it), the path answering a health
    check with 200 (``PING_PATH``) and the prefix of the ping threads' names.
    """

    SUBJECT: ClassVar[str]
    PING_PATH: ClassVar[str]
    PING_THREAD_PREFIX: ClassVar[str]

    def __init__(
        self,
        settings: Settings,
        http: HttpClient | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._settings = settings
        self._http = http if http is not None else HttpClient(pool_size=POOL_SIZE)
        # No jitter: a supernode's own retries are few and spaced by the worker's step backoff.
        self._retry = RetryPolicy(attempts, backoff_seconds, jitter=Jitter.NONE)
        self._sleep = sleep

    @property
    def targets(self) -> tuple[str, ...]:
        return self._settings.supernodes

    # What a driver's helper modules (verify, evict) share of it.
    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def http(self) -> HttpClient:
        return self._http

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    def send(self, method: str, target: str, path: str, what: str) -> Response:
        """A body-less request with the driver's retries (see ``_send_with_retries``)."""
        return self._send_with_retries(method, target, path, what)

    @property
    def batch_size(self) -> int:
        return 1

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        return [self.create(target, blob) for blob in blobs]

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        raise NotImplementedError

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        raise NotImplementedError

    def look(self, blob: BlobProgress, targeting: Targeting) -> SupernodeTask:
        """Both HTTP APIs answer by the task id their create gave: targeting is the job's affair."""
        return self.status(blob.target, blob.supernode_task_id or "")

    @property
    def looks_per_round(self) -> int | None:
        return None

    def ping(self) -> Mapping[str, str | None]:
        targets = self.targets
        if not targets:
            return {}
        # In parallel so that one dead target costs the health check one timeout, not one each.
        with ThreadPoolExecutor(
            min(len(targets), MAX_PING_THREADS), thread_name_prefix=self.PING_THREAD_PREFIX
        ) as pool:
            return dict(zip(targets, pool.map(self._ping_one, targets), strict=True))

    def _ping_one(self, target: str) -> str | None:
        timeout = self._settings.check_timeout_seconds
        try:
            response = self._http.get(f"{target}{self.PING_PATH}", timeout=timeout)
        except RequestError as exc:
            return failure_reason(exc, timeout)
        return None if response.status_code == 200 else f"HTTP {response.status_code}"

    def _send_with_retries(
        self,
        method: str,
        target: str,
        path: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        rate_limited: bool = False,
    ) -> Response:
        """The first answer that is neither 5xx nor 429; those, connection errors and timeouts are
        retried with backoff, then raised as TransientFailure so that the worker tries again later.
        With ``rate_limited`` a 429 raises Throttled at once, for the caller to wait out."""
        timeout = self._settings.supernode_timeout_seconds
        reason = ""
        for attempt in range(1, self._retry.attempts + 1):
            if attempt > 1:
                self._sleep(self._retry.delay(attempt - 1))
            try:
                # Redirects are not followed: neither API redirects, and a request's body and headers
                # carry credentials that must not be replayed to wherever a Location points.
                response = self._http.request(
                    method, f"{target}{path}", timeout=timeout, headers=headers, json=json
                )
            except BodyTooLarge:
                # Not an answer of the API at all: asking again would read as much again.
                raise PermanentFailure(
                    f"{self.SUBJECT} {display_target(target)} did not {what}: it answered more than "
                    f"{DEFAULT_MAX_BODY} bytes"
                ) from None
            except RequestError as exc:
                reason = failure_reason(exc, timeout)
                continue
            if response.status_code < 500 and response.status_code != 429:
                return response
            reason = f"HTTP {response.status_code}"
            if response.status_code == 429 and rate_limited:
                with response:
                    text = response.text.strip()[:80]
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise Throttled(f"{reason}: {text}" if text else reason, retry_after)
        raise TransientFailure(
            f"{self.SUBJECT} {display_target(target)} did not {what} "
            f"after {self._retry.attempts} attempts: {reason}"
        )


def json_body(response: Response) -> Any:
    """The answer's JSON, or None when its body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def display_target(target: str) -> str:
    """The target without user:password, should the configured base URL carry them."""
    parts = urlsplit(target)
    if parts.username is None and parts.password is None:
        return target
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
