"""A local HTTP server served on a daemon thread: the one mechanism behind the local stack's fake
servers (API Gateway, the reference supernode, the Dragonfly 2 manager) and the stub registries,
proxies and fault-injecting servers of the tests and benchmarks."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self


class LocalHTTPServer(ThreadingHTTPServer):
    """The ThreadingHTTPServer every local server builds on: handler threads that do not hold up the
    process's exit, and a listen backlog for bursts (socketserver's default of 5 drops the SYNs of a
    client opening many connections at once, and each dropped one costs a second before it is sent
    again)."""

    daemon_threads = True
    request_queue_size = 128


class BackgroundServer:
    """Serves ``server`` (bound to 127.0.0.1, port 0 for a free one) until :meth:`close`.

    ``poll_interval`` is how often ``serve_forever`` looks for a shutdown: :meth:`close` waits up to
    one interval, which adds up where tests start and stop many servers.
    """

    def __init__(self, server: ThreadingHTTPServer, name: str, poll_interval: float = 0.05) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(poll_interval,), name=name, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
