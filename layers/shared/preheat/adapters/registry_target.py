"""The server one resolution talks to: its origin, the caller's credentials, its deadline, and how
what it answers is quoted (scrubbed of those credentials, then cut).

Caller headers are credentials. They go to the target's origin and nowhere else; no message quotes
them, and text a server answers with is scrubbed of them before it is quoted.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from preheat.adapters.http import Response
from preheat.adapters.http import loads as _loads
from preheat.adapters.quoting import scrub, secrets_of, truncate
from preheat.errors import PermanentFailure
from preheat.handover import pull_scope
from preheat.models import Credentials

MAX_ERROR_BYTES = 64 * 1024
OUT_OF_TIME = "the step's time ran out before it was done"

# Caller headers that describe the request framing, or make the answer partial or conditional,
# rather than the caller: sending them would break the request (a manifest cut to a range, a 304),
# never authorize it, and a supernode sent them would cache part of a blob.
FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)
Origin = tuple[str, str, int]


class AttemptFailed(Exception):
    """One attempt failed in a way worth another (5xx, 429, timeout, broken connection)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class Target:
    """One resolution's view of the server the caller's headers belong to.

    ``authorization`` starts as the caller's and becomes a Bearer token once one is exchanged; it
    is shared by the threads resolving blobs, hence the lock."""

    origin: Origin
    name: str  # "registry HOST" or "server HOST", for messages
    repository: str | None  # None for a plain file server: no token exchange there
    extra: dict[str, str]
    caller_auth: str | None
    authorization: str | None
    secrets: list[str]
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When the resolution must be over (``clock()``): no request starts after it, none outlasts it.
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    # The Bearer token in use, when a token service issued it: its cache key (realm, service, scope,
    # caller fingerprint), and whether this resolution fetched it (rather than reused it).
    token_key: tuple[str, str, str, str] | None = None
    token_fetched: bool = False

    @classmethod
    def of(
        cls,
        url: str,
        name: str,
        repository: str | None,
        headers: Credentials,
        time_budget_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Target:
        revealed = headers.reveal()
        caller_auth = headers.get_ci("Authorization")
        extra = {
            key: value
            for key, value in revealed.items()
            if key.lower() != "authorization" and key.lower() not in FRAMING_HEADERS
        }
        return cls(
            origin=origin_of(url),
            name=name,
            repository=repository,
            extra=extra,
            caller_auth=caller_auth,
            authorization=caller_auth,
            secrets=secrets_of(revealed.values()),
            deadline=None if time_budget_seconds is None else clock() + time_budget_seconds,
            clock=clock,
        )

    def time_left(self, timeout: float) -> float:
        """``timeout``, or less when the deadline is nearer; AttemptFailed (and no more retries) once it
        has passed."""
        if self.deadline is None:
            return timeout
        left = self.deadline - self.clock()
        if left <= 0:
            self.cancelled.set()
            raise AttemptFailed(OUT_OF_TIME)
        return min(timeout, left)

    def owns(self, url: str) -> bool:
        return origin_of(url) == self.origin

    def current_authorization(self) -> str | None:
        with self.lock:
            return self.authorization

    def use(
        self,
        authorization: str,
        secret: str,
        token_key: tuple[str, str, str, str] | None = None,
        fetched: bool = False,
    ) -> None:
        with self.lock:
            self.authorization = authorization
            self.token_key, self.token_fetched = token_key, fetched
            if secret not in self.secrets:
                self.secrets.extend(secrets_of([secret, authorization]))

    def request_headers(self, authorization: str | None, own: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's headers, then ours (``own``, e.g. Accept) in place of any of the same name."""
        ours = {name.lower() for name in own or {}}
        headers = {name: value for name, value in self.extra.items() if name.lower() not in ours}
        headers.update(own or {})
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def credentials(self) -> Credentials:
        """What the worker sends to a URL on this target's origin now (the supernode gets what
        :func:`preheat.handover.peer_credentials` keeps of it)."""
        return Credentials(self.request_headers(self.current_authorization()))

    def token_in_use(self, key: tuple[str, str, str, str]) -> str | None:
        """The Authorization in use when it is a token issued under ``key``, else None."""
        with self.lock:
            return self.authorization if self.token_key == key else None

    def scoped_token(self) -> bool:
        """Whether the Authorization in use is a token issued for pulling this repository alone."""
        with self.lock:
            key = self.token_key
        return key is not None and self.repository is not None and key[2] == pull_scope(self.repository)

    def refused(self, status: int, detail: str) -> PermanentFailure:
        where = f" for repository {self.repository}" if self.repository else ""
        if self.caller_auth is None:
            return PermanentFailure(
                f"{self.name} requires credentials{where} and the request's 'header' has no "
                f"Authorization (HTTP {status}{detail})"
            )
        return PermanentFailure(f"{self.name} refused the credentials{where} (HTTP {status}{detail})")

    def scrub(self, text: str) -> str:
        # Replace before cutting: a cut could leave half a secret that no longer matches.
        with self.lock:
            secrets = list(self.secrets)
        return truncate(scrub(text, secrets))


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def error_detail(response: Response, scrub: Callable[[str], str]) -> str:
    """``": CODE: message"`` from a Distribution ``{"errors": [...]}`` body (or S3's XML), scrubbed."""
    try:
        raw = response.read(MAX_ERROR_BYTES)
    except Exception:  # the detail is a courtesy; the status code already tells
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    parts: list[str] = []
    try:
        errors = _loads(text).get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list):
        for error in errors[:3]:
            if isinstance(error, dict):
                code, message = error.get("code"), error.get("message")
                parts.append(": ".join(str(item) for item in (code, message) if item))
    else:
        code_match = re.search(r"<Code>([^<]{1,100})</Code>", text)
        message_match = re.search(r"<Message>([^<]{1,300})</Message>", text)
        if code_match:
            parts.append(": ".join(m.group(1) for m in (code_match, message_match) if m))
    detail = "; ".join(part for part in parts if part)
    return f": {scrub(detail)}" if detail else ""


def display_url(url: str) -> str:
    """The URL without its query (signatures) or user info, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{display_host(url)}{parts.path}"


def display_host(url: str) -> str:
    """``host[:port]`` without user info."""
    scheme, host, port = origin_of(url)
    host = f"[{host}]" if ":" in host else host
    return host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
