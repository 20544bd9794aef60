"""The reference supernode's HTTP front (``local/supernode.py``): routes, bodies and answers, each
handed to :class:`local.supernode.ReferenceSupernode`; a module of its own so that the supernode
stays within its size."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from local.background import LocalHTTPServer

if TYPE_CHECKING:
    from local.supernode import ReferenceSupernode

log = logging.getLogger("local.supernode")

MAX_BODY_BYTES = 1 << 20
_TASK_PATH_RE = re.compile(r"^/preheats/([^/]+)$")
# The task API is served under /api/v1 (optionally after /v<version>) only, never bare.
_CDN_TASK_PATH_RE = re.compile(r"^(?:/v[0-9.]+)?/api/v1/tasks/([^/]+)/?$")


def error_answer(status: HTTPStatus, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": int(status), "message": message}


class SupernodeServer(LocalHTTPServer):
    allow_reuse_address = True
    # A worker sends a hundred blobs at once: with socketserver's backlog of 5 the connections beyond
    # it would wait a second for the handshake to be retried (a real supernode, in Go, takes them).
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], supernode: ReferenceSupernode
    ) -> None:
        self.supernode = supernode
        super().__init__(address, handler)


class SupernodeHandler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY every answer on a kept-alive connection waits for the client's delayed ACK
    # (about 40 ms a request).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "ReferenceSupernode/1"
    # Idle keep-alive connections must not pin handler threads forever.
    timeout = 30
    server: SupernodeServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _stopped(self) -> bool:
        """A stopped supernode is a dead process: a kept-alive connection is dropped unanswered
        (the handler threads outlive ``stop``), not served as if nothing happened."""
        if self.server.supernode.stopped:
            self.close_connection = True
            return True
        return False

    def _route(self) -> str:
        path = urlsplit(self.path).path
        if path.startswith("/api/v1/"):
            path = path[len("/api/v1") :]
        return path.rstrip("/") or "/"

    def do_GET(self) -> None:
        if self._stopped():
            return
        path = self._route()
        supernode = self.server.supernode
        if match := _CDN_TASK_PATH_RE.match(urlsplit(self.path).path):
            self._send_json(*supernode.task_info(unquote(match.group(1))))
        elif path == "/_ping":
            self._send(HTTPStatus.OK, b"OK", "text/plain; charset=utf-8")
        elif path == "/preheats":
            self._send_json(*supernode.list_tasks())
        elif match := _TASK_PATH_RE.match(path):
            self._send_json(*supernode.get(unquote(match.group(1))))
        else:
            self._send_json(*error_answer(HTTPStatus.NOT_FOUND, f"no route for GET {path}"))

    def do_HEAD(self) -> None:
        self._send_json(*error_answer(HTTPStatus.METHOD_NOT_ALLOWED, "HEAD is not supported"))

    def do_POST(self) -> None:
        if self._stopped():
            return
        path = self._route()
        if path != "/preheats":
            self._discard_body()
            self._send_json(*error_answer(HTTPStatus.NOT_FOUND, f"no route for POST {path}"))
            return
        body = self._read_json()
        if body is not None:
            self._send_json(*self.server.supernode.create(body))

    def do_DELETE(self) -> None:
        if self._stopped():
            return
        path = self._route()
        if match := _CDN_TASK_PATH_RE.match(urlsplit(self.path).path):
            self._send_json(*self.server.supernode.delete_cached(unquote(match.group(1))))
        elif match := _TASK_PATH_RE.match(path):
            self._send_json(*self.server.supernode.delete(unquote(match.group(1))))
        else:
            self._send_json(*error_answer(HTTPStatus.NOT_FOUND, f"no route for DELETE {path}"))

    def _read_json(self) -> Any | None:
        """The decoded body, or None after answering 400/413 itself."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send_json(
                *error_answer(HTTPStatus.BAD_REQUEST, "a JSON body with a Content-Length is required")
            )
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(
                *error_answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is larger than 1 MiB")
            )
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            self._send_json(*error_answer(HTTPStatus.BAD_REQUEST, "the body is not valid JSON"))
            return None

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _send_json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
