"""The fake Dragonfly 2 manager's HTTP face: ``GET /healthy`` and the open API's job routes, each
request recorded as it arrived, then handed to :class:`local.dragonfly2_manager.FakeDragonfly2Manager`."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from local.background import LocalHTTPServer

if TYPE_CHECKING:
    from local.dragonfly2_manager import FakeDragonfly2Manager

log = logging.getLogger("local.dragonfly2_manager")

MAX_BODY_BYTES = 1 << 20
JOBS_PATH = "/oapi/v1/jobs"
_JOB_PATH_RE = re.compile(r"^/oapi/v1/jobs/([^/]+)$")


class ManagerServer(LocalHTTPServer):
    allow_reuse_address = True
    # The worker creates a hundred jobs at once: socketserver's backlog of 5 would make the
    # connections beyond it wait a second for their handshake to be retried.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        manager: FakeDragonfly2Manager,
    ) -> None:
        self.manager = manager
        super().__init__(address, handler)


class ManagerHandler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY every answer on a kept-alive connection waits for the client's delayed ACK
    # (about 40 ms a request).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "FakeDragonfly2Manager/1"
    timeout = 30
    server: ManagerServer

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry ?access_token=: log the path only.
        log.debug("%s %s %s", self.address_string(), self.command, urlsplit(self.path).path)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        manager = self.server.manager
        if path == "/healthy":
            if manager.healthy:
                self._send(HTTPStatus.OK, b"OK", "text/plain; charset=utf-8")
            else:
                self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"message": "Service Unavailable"})
            return
        match = _JOB_PATH_RE.match(path)
        if match is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})
            return
        if self._refused("GET", path, None):
            return
        self._send_json(*manager.get(match.group(1)))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        body = self._read_json()
        if path != JOBS_PATH:
            self._send_json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})
            return
        if self._refused("POST", path, body):
            return
        if body is _UNREADABLE:
            self._send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": "invalid character in JSON body"})
            return
        status, answer = self.server.manager.create(body)
        if isinstance(answer, str):
            self._send(status, answer.encode(), "text/plain; charset=utf-8")
        else:
            self._send_json(status, answer)

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        match = _JOB_PATH_RE.match(path)
        if match is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})
            return
        if self._refused("DELETE", path, None):
            return
        self._send_json(*self.server.manager.delete(match.group(1)))

    def _refused(self, method: str, path: str, body: Any) -> bool:
        """Record the request, then answer an injected error or a refused token; True if answered."""
        manager = self.server.manager
        authorization = self.headers.get("Authorization")
        manager.record(method, path, authorization, None if body is _UNREADABLE else body)
        injected = manager.injected(method)
        if injected is not None:
            phrase = HTTPStatus(injected).phrase if injected in HTTPStatus._value2member_map_ else "injected"
            self._send_json(injected, {"message": phrase})
            return True
        query_token = parse_qs(urlsplit(self.path).query).get("access_token", [None])[0]
        refusal = manager.authorize(authorization, query_token)
        if refusal is not None:
            self._send_json(*refusal)
            return True
        return False

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return _UNREADABLE
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return _UNREADABLE

    def _send_json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


_UNREADABLE: Any = object()
