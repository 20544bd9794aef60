"""An upstream server a supernode downloads from, for the tests of the supernodes and their drivers."""

from __future__ import annotations

import threading

from tests.support.http_server import QuietHandler, serve


class Origin:
    """Serves ``files`` by path (anything else is 404), answers ``redirects`` with 302, and records
    each request's path and headers in ``seen``.

    While ``gate`` is cleared, file answers wait for it, so a test can hold a download RUNNING.
    ``close`` stops it (``with contextlib.closing(Origin()) as origin:``)."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.redirects: dict[str, str] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        origin = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                origin.seen.append((self.path, dict(self.headers.items())))
                if path in origin.redirects:
                    self.answer(b"", 302, {"Location": origin.redirects[path]})
                    return
                body = origin.files.get(path)
                if body is None:
                    self.answer(b"", 404)
                    return
                origin.gate.wait(10)
                self.answer(body)

        self._server = serve(Handler, "origin")

    def url(self, path: str) -> str:
        return f"{self._server.url}{path}"

    def requests_to(self, path: str) -> list[dict[str, str]]:
        """The headers of each request for ``path`` (whatever its query)."""
        return [headers for seen_path, headers in self.seen if seen_path.split("?", 1)[0] == path]

    def close(self) -> None:
        self.gate.set()
        self._server.close()
