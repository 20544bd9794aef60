"""A scripted stub server: a threaded HTTP server on 127.0.0.1 answering what a handler scripts, for
what a real registry will not do on demand (throttling, 5xx, slowness, redirect loops), and the
benchmarks' stub registries."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local.background import BackgroundServer, LocalHTTPServer


@dataclass(frozen=True)
class StubRequest:
    """A request the stub received. ``headers`` ignore case, as HTTP does."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    host: str  # 127.0.0.1:PORT of the stub that answered
    peer: str = ""  # the client's 127.0.0.1:PORT: one per connection, so tests can count connections

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class StubResponse:
    """What the stub answers. An iterable ``body`` is streamed without Content-Length."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def json(cls, document: Any, status: int = 200, **headers: str) -> StubResponse:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> StubResponse:
        """A Distribution error body: ``{"errors": [{"code": ..., "message": ...}]}``."""
        return cls.json({"errors": [{"code": code, "message": message}]}, status, **headers)

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> StubResponse:
        return cls(status, b"", {"Location": location})


Handler = Callable[[StubRequest], StubResponse]


class _QuietServer(LocalHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a connection it no longer wants (a blob it did not read) is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class StubServer(BackgroundServer):
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``handler(request)``.

    Every request is kept in :attr:`requests`. A handler that raises answers 500 (and the error
    is kept in :attr:`errors`, so a test can assert there was none).
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda request: StubResponse(404))
        self.requests: list[StubRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        # A short poll interval: tests start and stop many of these.
        super().__init__(_QuietServer(("127.0.0.1", 0), self._handler_class()), "stub-server", 0.01)

    def requests_to(self, path_prefix: str) -> list[StubRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    @property
    def connections(self) -> int:
        """How many connections the requests so far came over."""
        with self._lock:
            return len({r.peer for r in self.requests})

    def _record(self, request: StubRequest) -> StubResponse:
        with self._lock:
            self.requests.append(request)
        try:
            return self.handler(request)
        except Exception as exc:  # a test's handler failing must show, not hang the client
            with self._lock:
                self.errors.append(exc)
            return StubResponse(500, f"stub handler failed: {exc!r}".encode())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; Nagle would hold the body for the client's
            # delayed ACK (40 ms a request).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                request = StubRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers=self.headers,
                    host=stub.host,
                    peer=f"{self.client_address[0]}:{self.client_address[1]}",
                )
                response = stub._record(request)
                if response.delay:
                    time.sleep(response.delay)
                try:
                    self._send(response)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send(self, response: StubResponse) -> None:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if isinstance(response.body, bytes):
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(response.body)
                    return
                # No length: the body ends when the connection does.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                for chunk in response.body:
                    self.wfile.write(chunk)

        return _Handler
