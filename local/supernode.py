"""A reference Dragonfly 1 supernode: the ``/preheats`` API, backed by a real download cache.

This is a tool for trying the Preheat service (and for its tests) without a Dragonfly cluster. It is
NOT a supernode for production: it serves no P2P pieces, keeps its task list in memory only, and has
no authentication. What it does do faithfully is the part the Preheat service depends on:

* ``POST /preheats`` (also ``/api/v1/preheats``) with ``{"type","url","headers","filter","identifier"}``;
  only ``file`` tasks are supported (the Preheat service resolves images into files itself).
* Task ids as the Go supernode derives them (``generateTaskID``): sha256 over its key, the URL
  without its ``filter`` query parameters, the identifier and a ``Range`` header if any, and the key
  again: a node's dfget computes the same id, and two signed URLs of one object are one task.
* 201 ``{"ID"}`` for a new task (and for a repeat of a waiting or running one: no second download),
  208 ``{"code":208,"message":"preheat task already exists, id:<ID>"}`` for a repeat of a finished
  one, and a restart for a repeat of a failed one.
* A bounded pool of workers that download each URL with the given headers into ``<cache_dir>/<ID>``,
  verifying the sha256 when the URL names a ``.../blobs/sha256:<hex>`` digest, and following
  redirects as Go's client does (Authorization dropped when the host changes).
* ``GET /preheats/{id}`` answers ``{"ID","status","startTime","finishTime","errorMsg"}`` with status
  ``WAITING`` -> ``RUNNING`` -> ``SUCCESS`` | ``FAILED``; ``GET /preheats``, ``DELETE /preheats/{id}``
  and ``GET /_ping`` too.
* The Go supernode's task API, only under ``/api/v1``: ``GET /api/v1/tasks/{id}`` answers
  ``{"taskId","cdnStatus","fileLength","rawURL"}`` for a task its cache holds (or is downloading),
  and HTTP 500 ``{"code":500,"message":"... data not found"}`` for one it does not (unknown, deleted,
  or its file gone from the cache), as Go releases v1.0.0 to v1.0.6 do; ``DELETE /api/v1/tasks/{id}``
  drops the cached file and answers 200 even for an unknown task, but keeps the preheat record, so a
  repeat ``POST /preheats`` answers 208 and downloads nothing until ``DELETE /preheats/{id}``.

Run it alone with ``python -m local.supernode --port 8002 --cache-dir DIR``; tests use
:class:`ReferenceSupernode` directly.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.cookiejar
import json
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from time import monotonic
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import unquote, urljoin, urlsplit

import requests
import requests.adapters

from local.background import BackgroundServer, LocalHTTPServer

log = logging.getLogger("local.supernode")

WAITING = "WAITING"
RUNNING = "RUNNING"
SUCCESS = "SUCCESS"
FAILED = "FAILED"

MAX_BODY_BYTES = 1 << 20
MAX_REDIRECTS = 10
CHUNK_BYTES = 1 << 16

_BLOB_DIGEST_RE = re.compile(r"/blobs/(sha256:[0-9a-f]{64})$")
_TASK_PATH_RE = re.compile(r"^/preheats/([^/]+)$")
# The task API is served under /api/v1 (optionally after /v<version>) only, never bare.
_CDN_TASK_PATH_RE = re.compile(r"^(?:/v[0-9.]+)?/api/v1/tasks/([^/]+)/?$")


class _BadRequest(Exception):
    pass


class _DownloadError(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _without_query(url: str) -> str:
    # Query strings of signed URLs carry signatures: logs and error messages show only the rest.
    return url.split("?", 1)[0]


def filter_url(url: str, filters: tuple[str, ...]) -> str:
    """``url`` without the query parameters named in ``filters``; the others keep their order."""
    base, sep, query = url.partition("?")
    if not sep or not filters:
        return url
    kept = [param for param in query.split("&") if param and param.split("=", 1)[0] not in filters]
    return f"{base}?{'&'.join(kept)}" if kept else base


# The key the Go supernode wraps a task id's material in (supernode/daemon/mgr/task/manager.go).
TASK_ID_KEY = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"


def task_id_for(url: str, filters: tuple[str, ...], identifier: str, headers: Mapping[str, str]) -> str:
    """The task id as the Go supernode's ``generateTaskID`` derives it: sha256 over the key, the URL
    without its ``filter`` parameters, the identifier, a ``Range`` header if any, and the key again.
    A node's dfget computes the same id for the same URL, filter and identifier."""
    range_value = next((v for k, v in headers.items() if k.lower() == "range"), "")
    material = f"{TASK_ID_KEY}{filter_url(url, filters)}{identifier}{range_value}{TASK_ID_KEY}"
    return hashlib.sha256(material.encode()).hexdigest()


# Headers Go's http.Client drops on a redirect to a host that is neither the first one nor one of
# its subdomains (net/http, shouldCopyHeaderOnRedirect); every other header follows the redirect.
_SENSITIVE_ON_REDIRECT = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})


def _redirect_headers(headers: Mapping[str, str], first: str, current: str) -> dict[str, str]:
    """The headers Go's client sends to ``current`` when the download started at ``first``: the
    hostnames are compared, ports aside, as Go does."""
    initial = (urlsplit(first).hostname or "").lower()
    destination = (urlsplit(current).hostname or "").lower()
    if destination == initial or destination.endswith(f".{initial}"):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() not in _SENSITIVE_ON_REDIRECT}


@dataclass(frozen=True)
class CreateRequest:
    url: str
    headers: dict[str, str]
    filter: tuple[str, ...]
    identifier: str


def parse_create(body: Any) -> CreateRequest:
    """Validate a create body; a problem raises ``_BadRequest`` naming header names, never values."""
    if not isinstance(body, dict):
        raise _BadRequest('body must be a JSON object like {"type":"file","url":"https://..."}')
    raw_type = body.get("type")
    if not isinstance(raw_type, str) or raw_type.lower() not in ("file", "image"):
        raise _BadRequest(f'\'type\' must be "file" or "image", got {raw_type!r:.64}')
    if raw_type.lower() == "image":
        raise _BadRequest(
            "image isn't supported by this reference supernode: send one 'file' task per blob "
            "(the Preheat service resolves images itself)"
        )
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise _BadRequest("'url' must be a non-empty string")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _BadRequest(f"'url' must be an absolute http(s) URL, got {_without_query(url)!r:.200}")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict):
        raise _BadRequest("'headers' must be a JSON object of header names to string values")
    for name, value in headers.items():
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise _BadRequest(f"'headers' value of {name!r:.64} must be a string without line breaks")
    raw_filter = body.get("filter") or ""
    if not isinstance(raw_filter, str):
        raise _BadRequest("'filter' must be a string of query parameter names joined by '&'")
    identifier = body.get("identifier") or ""
    if not isinstance(identifier, str):
        raise _BadRequest("'identifier' must be a string")
    filters = tuple(name for name in raw_filter.split("&") if name)
    return CreateRequest(url=url, headers=dict(headers), filter=filters, identifier=identifier)


@dataclass(frozen=True)
class TaskRecord:
    """A snapshot of one task, for tests and ``GET /preheats``."""

    id: str
    url: str
    status: str
    start_time: datetime
    finish_time: datetime | None
    error_msg: str
    digest: str | None
    size: int | None
    cache_path: Path | None

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "status": self.status,
            "startTime": _rfc3339(self.start_time),
            "finishTime": _rfc3339(self.finish_time),
            "errorMsg": self.error_msg,
        }


@dataclass
class _Task:
    id: str
    url: str
    digest: str | None
    # Needed by the download only; dropped as soon as it ends.
    headers: dict[str, str]
    generation: int
    status: str = WAITING
    start_time: datetime = field(default_factory=_utcnow)
    finish_time: datetime | None = None
    error_msg: str = ""
    size: int | None = None
    cache_path: Path | None = None
    # DELETE /api/v1/tasks/{id} dropped the cached file but not this record (see the module notes).
    cdn_dropped: bool = False

    def snapshot(self) -> TaskRecord:
        return TaskRecord(
            id=self.id,
            url=self.url,
            status=self.status,
            start_time=self.start_time,
            finish_time=self.finish_time,
            error_msg=self.error_msg,
            digest=self.digest,
            size=self.size,
            cache_path=self.cache_path,
        )


class ReferenceSupernode:
    """An in-process Dragonfly 1 supernode serving ``/preheats`` on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        cache_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent_downloads: int = 4,
        finish_delay: float = 0,
        download_timeout: float = 30.0,
        task_timeout: float = 1800.0,
    ) -> None:
        if max_concurrent_downloads < 1:
            raise ValueError("max_concurrent_downloads must be at least 1")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._host = host
        self._port = port
        self._max_concurrent = max_concurrent_downloads
        self._finish_delay = finish_delay
        self._download_timeout = download_timeout
        self._task_timeout = task_timeout
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._requests_seen: list[dict[str, Any]] = []
        # file name -> (size, "sha256:<hex>") recorded while downloading, so listing needs no re-read.
        self._hashes: dict[str, tuple[int, str]] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._served: BackgroundServer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._session: requests.Session | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self._max_concurrent, thread_name_prefix="supernode-download")
        self._session = download_session(self._max_concurrent)
        self._server = _Server((self._host, self._port), _Handler, self)
        self._served = BackgroundServer(self._server, "supernode-http", poll_interval=0.1)
        log.info("reference supernode listening on %s, cache %s", self.url, self.cache_dir)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        if self._served is not None:
            self._served.close()
            self._served = None
        if self._pool is not None:
            # Downloads in flight notice ``_stopping`` at their next chunk.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the supernode is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- inspection for tests --------------------------------------------------------------------

    @property
    def requests_seen(self) -> list[dict[str, Any]]:
        """Every create body received (valid or not), exactly as it arrived, header values included:
        the tests assert on what the service really sent (a credential where it must, or must not, be).
        Only this in-process record holds them: logs, task errors and ``GET /preheats`` do not."""
        with self._lock:
            return list(self._requests_seen)

    def tasks(self) -> dict[str, TaskRecord]:
        with self._lock:
            return {task_id: task.snapshot() for task_id, task in self._tasks.items()}

    def cached_digests(self) -> set[str]:
        """``sha256:<hex>`` of every file in the cache, whether this process downloaded it or not."""
        digests = set()
        for path in self._cache_files():
            size = path.stat().st_size
            with self._lock:
                known = self._hashes.get(path.name)
            if known is not None and known[0] == size:
                digests.add(known[1])
                continue
            sha = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
                    sha.update(chunk)
            digests.add(f"sha256:{sha.hexdigest()}")
        return digests

    def _cache_files(self) -> Iterator[Path]:
        for path in self.cache_dir.iterdir():
            # Partial downloads are dot files (see _download).
            if path.is_file() and not path.name.startswith("."):
                yield path

    # -- the API ---------------------------------------------------------------------------------

    def create(self, body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._requests_seen.append(copy.deepcopy(body))
        try:
            request = parse_create(body)
        except _BadRequest as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        task_id = task_id_for(request.url, request.filter, request.identifier, request.headers)
        digest_match = _BLOB_DIGEST_RE.search(unquote(urlsplit(request.url).path))
        with self._lock:
            if self._stopping.is_set() or self._pool is None:
                return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the supernode is stopping")
            existing = self._tasks.get(task_id)
            if existing is not None and existing.cdn_dropped:
                # Go keeps the preheat record after a task delete: "already exists", nothing downloaded.
                return HTTPStatus.ALREADY_REPORTED, {
                    "code": int(HTTPStatus.ALREADY_REPORTED),
                    "message": f"preheat task already exists, id:{task_id}",
                }
            if existing is not None and existing.status in (WAITING, RUNNING):
                return HTTPStatus.CREATED, {"ID": task_id}
            if existing is not None and existing.status == SUCCESS and self._still_cached(existing):
                return HTTPStatus.ALREADY_REPORTED, {
                    "code": int(HTTPStatus.ALREADY_REPORTED),
                    "message": f"preheat task already exists, id:{task_id}",
                }
            # New, failed, or evicted from the cache behind our back: (re)start it.
            task = _Task(
                id=task_id,
                url=request.url,
                digest=digest_match.group(1) if digest_match else None,
                headers=request.headers,
                generation=existing.generation + 1 if existing else 1,
            )
            self._tasks[task_id] = task
            self._pool.submit(self._run, task_id, task.generation)
        log.info(
            "preheat task %s %s for %s (header names: %s, filter: %s)",
            task_id,
            "restarted" if existing else "created",
            _without_query(request.url),
            sorted(request.headers),
            "&".join(request.filter),
        )
        return HTTPStatus.CREATED, {"ID": task_id}

    def get(self, task_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return _error(HTTPStatus.NOT_FOUND, f"preheat task {task_id} doesn't exist")
            return HTTPStatus.OK, task.snapshot().to_api()

    def list_tasks(self) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            return HTTPStatus.OK, [task.snapshot().to_api() for task in self._tasks.values()]

    def delete(self, task_id: str) -> tuple[int, dict[str, Any]]:
        # Like Dragonfly, this forgets the task but keeps what it downloaded in the cache.
        with self._lock:
            if self._tasks.pop(task_id, None) is None:
                return _error(HTTPStatus.NOT_FOUND, f"preheat task {task_id} doesn't exist")
        return HTTPStatus.OK, {"ID": task_id}

    def task_info(self, task_id: str) -> tuple[int, dict[str, Any]]:
        """``GET /api/v1/tasks/{id}``: the CDN's view of a task (see the module notes)."""
        with self._lock:
            task = self._tasks.get(task_id)
            held = (
                task is not None
                and not task.cdn_dropped
                and (task.status != SUCCESS or self._still_cached(task))
            )
            if task is None or not held:
                return _error(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"failed to get key {task_id} from map: data not found",
                )
            return HTTPStatus.OK, {
                "taskId": task.id,
                "cdnStatus": task.status,
                "fileLength": task.size if task.size is not None else -1,
                "rawURL": _without_query(task.url),
            }

    def delete_cached(self, task_id: str) -> tuple[int, dict[str, Any]]:
        """``DELETE /api/v1/tasks/{id}``: drop the cached file, keep the preheat record; 200 always."""
        with self._lock:
            task = self._tasks.get(task_id)
            path = task.cache_path if task is not None else None
            if task is not None:
                task.cdn_dropped = True
                task.cache_path = None
        if path is not None:
            path.unlink(missing_ok=True)
        return HTTPStatus.OK, {}

    def _still_cached(self, task: _Task) -> bool:
        return task.cache_path is not None and task.cache_path.is_file()

    # -- the workers -----------------------------------------------------------------------------

    def _current(self, task_id: str, generation: int) -> _Task | None:
        """The task, unless it was deleted or restarted since this worker was queued."""
        task = self._tasks.get(task_id)
        return task if task is not None and task.generation == generation else None

    def _run(self, task_id: str, generation: int) -> None:
        with self._lock:
            task = self._current(task_id, generation)
            if task is None:
                return
            task.status = RUNNING
            url, headers, digest = task.url, task.headers, task.digest
        error = ""
        size: int | None = None
        path: Path | None = None
        try:
            size, path = self._download(task_id, url, headers, digest)
        except _DownloadError as exc:
            error = str(exc)
        except requests.Timeout:
            error = f"download of {_without_query(url)} timed out"
        except requests.ConnectionError:
            error = f"cannot connect to {urlsplit(url).netloc} to download {_without_query(url)}"
        except Exception as exc:
            # A worker must always finish its task. Only the type, and no traceback: messages such as
            # requests' InvalidHeader quote the header value.
            error = f"download of {_without_query(url)} failed: {type(exc).__name__}"
        if self._finish_delay > 0:
            self._stopping.wait(self._finish_delay)
        with self._lock:
            task = self._current(task_id, generation)
            if task is None:
                return
            task.headers = {}
            task.finish_time = _utcnow()
            task.status = FAILED if error else SUCCESS
            task.error_msg = error
            task.size, task.cache_path = size, path
        if error:
            log.warning("preheat task %s FAILED: %s", task_id, error)
        else:
            log.info("preheat task %s SUCCESS: %s bytes in %s", task_id, size, path)

    def _download(
        self, task_id: str, url: str, headers: dict[str, str], digest: str | None
    ) -> tuple[int, Path]:
        started = monotonic()
        final = self.cache_dir / task_id
        partial = self.cache_dir / f".{task_id}.{secrets.token_hex(4)}.part"
        sha = hashlib.sha256()
        size = 0
        try:
            session = self._session or download_session(1)
            with (
                open_following_redirects(session, url, headers, self._download_timeout) as response,
                partial.open("wb") as out,
            ):
                for chunk in response.iter_content(CHUNK_BYTES):
                    if self._stopping.is_set():
                        raise _DownloadError("the supernode stopped during the download")
                    if monotonic() - started > self._task_timeout:
                        raise _DownloadError(
                            f"download of {_without_query(url)} timed out after {self._task_timeout:g}s"
                        )
                    out.write(chunk)
                    sha.update(chunk)
                    size += len(chunk)
            actual = f"sha256:{sha.hexdigest()}"
            if digest is not None and actual != digest:
                raise _DownloadError(
                    f"digest mismatch: the URL names {digest} "
                    f"but the {size} bytes downloaded hash to {actual}"
                )
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        with self._lock:
            self._hashes[final.name] = (size, actual)
        return size, final


def open_following_redirects(
    session: requests.Session, url: str, headers: Mapping[str, str], timeout: float
) -> requests.Response:
    """GET ``url``, following redirects by hand the way a Dragonfly peer's Go client does:
    Authorization (and cookies) go to the host the URL named and its subdomains only, so a
    registry's token never reaches the storage it redirects to; other headers follow."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        response = session.get(
            current,
            headers=_redirect_headers(headers, url, current),
            stream=True,
            allow_redirects=False,
            timeout=timeout,
        )
        if not response.is_redirect:
            break
        location = response.headers.get("Location", "")
        response.close()
        current = urljoin(current, location)
    else:
        raise _DownloadError(f"more than {MAX_REDIRECTS} redirects from {_without_query(url)}")
    if response.status_code not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        response.close()
        raise _DownloadError(
            f"GET {_without_query(current)} answered HTTP {response.status_code}"
            + (f" (redirected from {_without_query(url)})" if current != url else "")
        )
    return response


def download_session(connections: int) -> requests.Session:
    """One session for every download, keeping a connection per concurrent download: a new session
    per blob would open (and discard) a connection per blob. Cookies are never kept (each task
    carries its own credentials), and the environment's proxies and netrc are not consulted."""
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=connections)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _error(status: HTTPStatus, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": int(status), "message": message}


class _Server(LocalHTTPServer):
    allow_reuse_address = True
    # A worker sends a hundred blobs at once: with socketserver's backlog of 5 the connections beyond
    # it would wait a second for the handshake to be retried (a real supernode, in Go, takes them).
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], supernode: ReferenceSupernode
    ) -> None:
        self.supernode = supernode
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY every answer on a kept-alive connection waits for the client's delayed ACK
    # (about 40 ms a request).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "ReferenceSupernode/1"
    # Idle keep-alive connections must not pin handler threads forever.
    timeout = 30
    server: _Server

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
            self._send_json(*_error(HTTPStatus.NOT_FOUND, f"no route for GET {path}"))

    def do_HEAD(self) -> None:
        self._send_json(*_error(HTTPStatus.METHOD_NOT_ALLOWED, "HEAD is not supported"))

    def do_POST(self) -> None:
        if self._stopped():
            return
        path = self._route()
        if path != "/preheats":
            self._discard_body()
            self._send_json(*_error(HTTPStatus.NOT_FOUND, f"no route for POST {path}"))
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
            self._send_json(*_error(HTTPStatus.NOT_FOUND, f"no route for DELETE {path}"))

    def _read_json(self) -> Any | None:
        """The decoded body, or None after answering 400/413 itself."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send_json(*_error(HTTPStatus.BAD_REQUEST, "a JSON body with a Content-Length is required"))
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(*_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is larger than 1 MiB"))
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            self._send_json(*_error(HTTPStatus.BAD_REQUEST, "the body is not valid JSON"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.supernode",
        description="Run the reference Dragonfly 1 supernode (a local tool, not for production).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--cache-dir", type=Path, default=Path(".supernode-cache"))
    parser.add_argument("--max-concurrent-downloads", type=int, default=4)
    parser.add_argument(
        "--finish-delay", type=float, default=0.0, help="seconds to wait before finishing a task"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with ReferenceSupernode(
        args.cache_dir,
        host=args.host,
        port=args.port,
        max_concurrent_downloads=args.max_concurrent_downloads,
        finish_delay=args.finish_delay,
    ):
        # A short wait in a loop so the signal handler runs promptly on every platform.
        while not stop.wait(0.5):
            pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
