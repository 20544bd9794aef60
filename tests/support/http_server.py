"""The tests' own small HTTP servers (file servers, origins a supernode downloads from), on the one
mechanism of the local servers (:mod:`local.background`).

    class Files(QuietHandler):
        def do_GET(self) -> None: ...

    with serve(Files) as server:
        ...  # server.url is http://127.0.0.1:<port>
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from local.background import BackgroundServer, LocalHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that writes no access log: the test's output is the test's."""

    def answer(self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        """Send ``body`` with ``status``, its Content-Length and ``headers``."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(LocalHTTPServer):
    """A client that hangs up before it read the whole answer is no error here: the worker resolves
    a file with a GET it closes unread (see the project's reference notes on registries)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def serve(handler: Any, name: str = "test-http") -> BackgroundServer:
    """``handler`` (a request handler class, or a factory of one) served on a free port of 127.0.0.1
    until the server is closed; use it as a context manager."""
    return BackgroundServer(_QuietServer(("127.0.0.1", 0), handler), name)


def serve_directory(root: Path) -> BackgroundServer:
    """The files below ``root``, served as they are (404 for the others)."""
    return serve(functools.partial(_QuietFiles, directory=str(root)), "test-files")
