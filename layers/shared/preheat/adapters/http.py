"""The HTTP client of the adapters that talk to registries and supernodes: a thin layer on urllib3.

Why not ``requests``: a 100-layer preheat makes some 300 requests in one step, and ``requests``
spends about as much CPU around each one as the request itself (it prepares every request afresh
and scans the process environment for proxies each time), and ~20 ms of every cold start importing
itself and its character-set detection. urllib3 is what it runs on anyway, and botocore loads it
already. What the adapters need of it is small: pooled connections, timeouts, streamed bodies
read within a limit, and exceptions that say what went wrong without quoting the request.

What it leaves out on purpose: no cookies (one warm Lambda serves many callers, and a cookie one
caller's credentials earned must not authorize the next), no ``~/.netrc``, no proxies from the
environment (a proxy would connect on our behalf, past the outbound policy), no redirects (the
callers follow them by hand, deciding per hop where credentials may go), no retries (the callers
retry with backoff). Certificates are verified against the system's trust store (``SSL_CERT_FILE``
points elsewhere).

:class:`GuardedPoolManager` makes every connection obey an :class:`~preheat.network.OutboundPolicy`
(see :mod:`preheat.network` for the policy, and why it checks the connected address).
"""

from __future__ import annotations

import json as jsonlib
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationValueError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

from preheat.jsontext import loads as _bounded_loads
from preheat.network import SCHEMES, AddressRefused, OutboundPolicy

# Connection pools kept (one per host:port) and connections kept per pool.
DEFAULT_POOLS = 16
DEFAULT_POOL_SIZE = 64


class RequestError(Exception):
    """A request that got no answer. The text is the underlying error's repr, which may quote the
    host: callers build their messages from the type (and an errno), never from the text."""


class Timeout(RequestError):
    """No connection, or no answer, within the timeout."""


class ConnectionFailed(RequestError):
    """The connection could not be made, or broke."""


class InvalidUrl(RequestError):
    """Not a URL that can be fetched."""


class InvalidHeader(RequestError):
    """A header value that cannot be sent (not Latin-1, or with a line break)."""


class BodyTooLarge(RequestError):
    """An answer longer than the request's ``max_body``: its reader stopped there."""


# The most of an answer read into memory unless a request says otherwise: what a supernode or a
# manager answers is a small JSON document; a server that sends more is not one of them.
DEFAULT_MAX_BODY = 1024 * 1024


class Response:
    """An answer: ``status_code``, ``headers`` (case-insensitive) and the body, either read at once
    (``content``, ``text``, ``json()``) or streamed (``iter_content``, ``read``). Use it as a context
    manager: closing it returns a fully read connection to the pool and drops any other."""

    __slots__ = ("_consumed", "_content", "_max_body", "_raw", "headers", "status_code")

    def __init__(self, raw: urllib3.BaseHTTPResponse, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._raw = raw
        self.status_code: int = raw.status
        self.headers = raw.headers
        self._content: bytes | None = None
        self._consumed = False
        self._max_body = max_body

    @property
    def content(self) -> bytes:
        """The body, read to its end; BodyTooLarge past ``max_body`` bytes (then left unread)."""
        if self._content is None:
            chunks: list[bytes] = []
            total = 0
            for chunk in self.iter_content(64 * 1024):
                total += len(chunk)
                if total > self._max_body:
                    raise BodyTooLarge(f"the answer is longer than {self._max_body} bytes")
                chunks.append(chunk)
            self._content = b"".join(chunks)
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (invalid UTF-8 and nesting too deep for the
        parser included)."""
        return loads(self.content)

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from self._raw.stream(chunk_size, decode_content=True)
        except Urllib3Timeout as exc:
            raise Timeout(repr(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionFailed(repr(exc)) from None
        self._consumed = True

    def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (what an error page says, say)."""
        data: bytes = self._raw.read(limit, decode_content=True)
        return data

    def close(self) -> None:
        if not self._consumed:
            # Bytes left unread would be read as the next answer on this connection: drop it.
            self._raw.close()
        self._raw.release_conn()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HttpClient:
    """Requests over one urllib3 pool manager, shared by every thread of the adapter using it."""

    def __init__(self, pool: PoolManager | None = None, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        # Enough connections per host for every thread calling at once: urllib3 would otherwise
        # open a connection for each extra call and discard it after.
        self._pool = pool if pool is not None else PoolManager(num_pools=DEFAULT_POOLS, maxsize=pool_size)

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float | tuple[float, float],
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        json: Any = None,
        stream: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        """One request, no redirects followed and no retries. ``stream`` leaves the body to be read
        (and the response to be closed) by the caller; otherwise it is read before this returns,
        and an answer longer than ``max_body`` bytes raises BodyTooLarge."""
        send_headers = dict(headers or {})
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            send_headers.setdefault("Content-Type", "application/json")
        if params:
            url += ("&" if urlsplit(url).query else "?") + urlencode(params)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        try:
            raw = self._pool.request(
                method,
                url,
                body=body,
                headers=send_headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=True,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )
        except (AddressRefused, RequestError):
            raise
        except LocationValueError as exc:
            raise InvalidUrl(repr(exc)) from None
        except NewConnectionError as exc:
            # Before the timeouts: urllib3 makes a refused or unresolvable connection a kind of one.
            raise ConnectionFailed(repr(exc)) from None
        except Urllib3Timeout as exc:
            raise Timeout(repr(exc)) from None
        except (UnicodeError, ValueError) as exc:
            # http.client refuses a header value with a line break (ValueError) or beyond Latin-1.
            raise InvalidHeader(type(exc).__name__) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionFailed(repr(exc)) from None
        response = Response(raw, max_body)
        if not stream:
            with response:
                _ = response.content
        return response

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)


# The adapters import the bounded ``loads`` from here, beside the client whose answers it decodes.
loads = _bounded_loads


# -- the outbound policy, enforced on every connection ---------------------------------------------


def _new_guarded_conn(connection: HTTPConnection, policy: OutboundPolicy) -> socket.socket:
    """urllib3's ``HTTPConnection._new_conn``, connecting through :meth:`OutboundPolicy.connect`."""
    try:
        sock = policy.connect(
            connection._dns_host,
            connection.port,
            connection.timeout,
            source_address=connection.source_address,
            socket_options=connection.socket_options,
        )
    except socket.gaierror as exc:
        raise NameResolutionError(connection.host, connection, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(
            connection, f"Connection to {connection.host} timed out. (connect timeout={connection.timeout})"
        ) from exc
    except OSError as exc:
        raise NewConnectionError(connection, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", connection, connection.host, connection.port)
    return sock


class _GuardedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def _new_conn(self) -> socket.socket:
        return _new_guarded_conn(self, self.policy)


class _GuardedHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def _new_conn(self) -> socket.socket:
        return _new_guarded_conn(self, self.policy)


class GuardedPoolManager(PoolManager):
    """A pool manager whose every connection obeys ``policy``, and which speaks http and https only."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = _GuardedHTTPSConnection if scheme == "https" else _GuardedHTTPConnection
        pool.conn_kw["policy"] = self.policy
        return pool

    def urlopen(self, method: str, url: str, *args: Any, **kw: Any) -> urllib3.BaseHTTPResponse:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in SCHEMES:
            raise AddressRefused(f"{scheme}:// is not fetched: only http and https are")
        return super().urlopen(method, url, *args, **kw)
