"""Fault injectors for the reliability suite.

- :class:`FaultyRegistry`: a small Distribution-like registry (``/v2/``, manifests by tag and by
  digest, blobs with ``Range`` probes, plain files) whose answers a test breaks per path and per
  attempt: HTTP errors (500, 429 with ``Retry-After``), connections reset in the middle of an
  answer, and stalls longer than the client's timeout.
- :class:`SlowSupernodeProxy`: a Dragonfly 1 supernode that answers slowly: a proxy in front of a
  real (reference) supernode that holds chosen answers back past the worker's timeout (and can
  keep a repository's tasks RUNNING until told otherwise).
- :class:`FlippingSupernode`: a stub Dragonfly 1 supernode whose tasks go WAITING, RUNNING, then
  FAILED with an ``errorMsg`` (or stay RUNNING forever).
- :class:`ClosedPort`: a supernode that is down (a port bound by nobody listening: connection refused).
- :class:`MotoOutage`: stops the local stack's moto HTTP server and starts it again on the same port
  *without* losing moto's state (``MotoServer.start()`` resets it, so it cannot be used for this).
- :class:`WorkerFaults`: kills the worker between two steps (after a send and before the save that
  records it; after the progress save) and crashes the whole invocation, as a Lambda that dies
  mid-batch would; and runs a hook between steps (the moto outage).
- :class:`SurvivingSqsPoller`: the local SQS poller, surviving a failed ``DeleteMessageBatch`` the
  way Lambda's event source mapping does (see its docstring: a bug of ``local.poller``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from local.aws import MotoServer
from local.background import BackgroundServer, LocalHTTPServer
from local.poller import SqsPoller
from local.stack import LocalStack

log = logging.getLogger("tests.reliability")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

_BLOB_REPO_RE = re.compile(r"/v2/(?P<repo>.+?)/blobs/")


# -- what a faulty server does to one answer ----------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One answer: ``ok``, an HTTP ``error`` (with ``body`` instead of a Distribution error when
    given), a ``reset`` mid-answer, or a ``stall``."""

    kind: str = "ok"
    status: int = 200
    retry_after: str | None = None
    seconds: float = 0.0
    body: bytes | None = None
    name: str = ""

    def __str__(self) -> str:
        if self.name:
            return self.name
        if self.kind == "error":
            return f"HTTP {self.status}" + (f" Retry-After {self.retry_after}" if self.retry_after else "")
        if self.kind == "stall":
            return f"stall {self.seconds:g}s"
        return self.kind


OK = Fault()


def http_error(status: int, retry_after: str | None = None) -> Fault:
    return Fault("error", status=status, retry_after=retry_after)


def hostile(status: int, body: bytes, name: str) -> Fault:
    """An answer with ``status`` and ``body`` as given (nested too deep, not UTF-8, ...)."""
    return Fault("error", status=status, body=body, name=name)


# A JSON document nested deeper than any parser recurses.
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def reset() -> Fault:
    """Headers and half the body, then an RST: the answer is cut off mid-way."""
    return Fault("reset")


def stall(seconds: float) -> Fault:
    """Say nothing for ``seconds``, then hang up."""
    return Fault("stall", seconds=seconds)


@dataclass(frozen=True)
class Script:
    """Faults by attempt: the n-th request gets ``first[n - 1]``, every later one ``then``; or, with
    ``down_for``, ``then`` is answered only from ``down_for`` seconds after the first request on,
    and ``during`` before (an outage that ends)."""

    first: tuple[Fault, ...] = ()
    then: Fault = OK
    down_for: float | None = None
    during: Fault = OK

    def at(self, attempt: int, since_first: float = 0.0) -> Fault:
        if self.down_for is not None:
            return self.during if since_first < self.down_for else self.then
        return self.first[attempt - 1] if attempt <= len(self.first) else self.then

    @classmethod
    def outage(cls, fault: Fault, seconds: float) -> Script:
        return cls(down_for=seconds, during=fault)

    @classmethod
    def times(cls, fault: Fault, count: int) -> Script:
        return cls((fault,) * count, OK)

    @classmethod
    def forever(cls, fault: Fault) -> Script:
        return cls((), fault)


@dataclass(frozen=True)
class Seen:
    """A request a fault server received, and what it did to it."""

    at: float  # time.monotonic()
    method: str
    path: str
    kind: str
    attempt: int
    fault: Fault


class _QuietServer(LocalHTTPServer):
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up are what these servers are for.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Served(BackgroundServer):
    """A threaded HTTP server on 127.0.0.1 (port 0: a free one) run on a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        server = _QuietServer(("127.0.0.1", 0), handler)
        server.owner = self  # type: ignore[attr-defined]
        super().__init__(server, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), {"Content-Type": "application/json"})


# -- a registry that misbehaves on demand -------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image the :class:`FaultyRegistry` serves: its manifest and every blob, config first."""

    repository: str
    tag: str
    manifest: bytes
    manifest_digest: str
    blobs: tuple[tuple[str, bytes], ...]  # (digest, content)

    @property
    def digests(self) -> list[str]:
        return [digest for digest, _ in self.blobs]


def sha256_digest(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


def make_image(repository: str, tag: str, config: bytes, layers: Sequence[bytes]) -> Image:
    blobs = ((sha256_digest(config), config), *((sha256_digest(layer), layer) for layer in layers))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blobs[0][0], "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest, "size": len(content)}
                for digest, content in blobs[1:]
            ],
        },
        indent=2,
    ).encode()
    return Image(repository, tag, manifest, sha256_digest(manifest), blobs)


class FaultyRegistry(_Served):
    """A Distribution-like registry serving :class:`Image` s and plain files, with faults.

    Requests are of four kinds: ``manifest``, ``probe`` (a blob GET with a ``Range``: the worker's
    resolution), ``download`` (a blob GET without one: the supernode's) and ``file``. A fault
    :class:`Script` is set per repository (or file name) and kind, optionally for one blob digest
    only; attempts are counted per path and kind, so each blob of an image sees its own script.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: dict[str, Image] = {}
        self._files: dict[str, bytes] = {}
        self._scripts: dict[tuple[str, str, str | None], Script] = {}
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._first_at: dict[tuple[str, str], float] = {}
        self.seen: list[Seen] = []
        super().__init__(_RegistryHandler, "faulty-registry")

    def add_image(self, image: Image) -> None:
        with self._lock:
            self._images[image.repository] = image

    def add_file(self, name: str, content: bytes) -> None:
        with self._lock:
            self._files[name] = content

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def file(self, name: str) -> bytes:
        with self._lock:
            return self._files[name]

    def break_(self, key: str, kind: str, script: Script, digest: str | None = None) -> None:
        """Answer requests of ``kind`` for repository (or file) ``key`` by ``script``."""
        with self._lock:
            self._scripts[(key, kind, digest)] = script

    def requests_for(self, key: str, kind: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                seen
                for seen in self.seen
                if _key_of(seen.path) == key and (kind is None or seen.kind == kind)
            ]

    def _fault_for(self, method: str, path: str, kind: str, digest: str | None) -> Fault:
        key = _key_of(path)
        with self._lock:
            self._attempts[(path, kind)] += 1
            attempt = self._attempts[(path, kind)]
            now = time.monotonic()
            first = self._first_at.setdefault((path, kind), now)
            script = self._scripts.get((key, kind, digest)) or self._scripts.get((key, kind, None))
            fault = script.at(attempt, now - first) if script else OK
            self.seen.append(Seen(now, method, path, kind, attempt, fault))
        return fault

    def _lookup(self, path: str) -> tuple[str, bytes, str] | None:
        """(kind, body, content type) for a path, None when nothing lives there."""
        with self._lock:
            if path.startswith("/files/"):
                content = self._files.get(path.removeprefix("/files/"))
                return None if content is None else ("file", content, "application/octet-stream")
            match = re.fullmatch(r"/v2/(?P<repo>.+)/(?P<what>manifests|blobs)/(?P<ref>[^/]+)", path)
            image = self._images.get(match.group("repo")) if match else None
            if match is None or image is None:
                return None
            ref = match.group("ref")
            if match.group("what") == "manifests":
                if ref in (image.tag, image.manifest_digest):
                    return "manifest", image.manifest, OCI_MANIFEST
                return None
            blob = dict(image.blobs).get(ref)
            return None if blob is None else ("blob", blob, "application/octet-stream")


def _key_of(path: str) -> str:
    if path.startswith("/files/"):
        return path.removeprefix("/files/")
    match = re.match(r"/v2/(?P<repo>.+)/(?:manifests|blobs)/", path)
    return match.group("repo") if match else path


class _RegistryHandler(_Handler):
    server_version = "FaultyRegistry/1"

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        registry: FaultyRegistry = self.owner
        path = urlsplit(self.path).path
        if path in ("/v2", "/v2/"):
            self._send_json(200, {})
            return
        found = registry._lookup(path)
        if found is None:
            error = {"code": "MANIFEST_UNKNOWN", "message": f"nothing at {path}"}
            self._send_json(404, {"errors": [error]})
            return
        kind, body, content_type = found
        probe_range = self.headers.get("Range")
        digest = path.rsplit("/", 1)[-1] if kind == "blob" else None
        if kind == "blob":
            kind = "probe" if probe_range else "download"
        fault = registry._fault_for(self.command, path, kind, digest)
        headers = {"Content-Type": content_type, "Docker-Content-Digest": sha256_digest(body)}
        status = 200
        if probe_range == "bytes=0-0" and body:
            status, headers["Content-Range"], body = 206, f"bytes 0-0/{len(body)}", body[:1]
        if fault.kind == "error" and fault.body is not None:
            self._send(fault.status, fault.body, {"Content-Type": content_type})
        elif fault.kind == "error":
            code = "TOOMANYREQUESTS" if fault.status == 429 else "UNKNOWN"
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            document = {"errors": [{"code": code, "message": f"injected {fault} on {kind}"}]}
            self._send(
                fault.status, json.dumps(document).encode(), {"Content-Type": "application/json", **extra}
            )
        elif fault.kind == "reset":
            self._reset(status, body, headers)
        elif fault.kind == "stall":
            time.sleep(fault.seconds)
            self.close_connection = True
        else:
            self._send(status, body, headers)

    def _reset(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        # Let the client read what was sent, then reset: SO_LINGER 0 makes close() send an RST.
        time.sleep(0.05)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


# -- supernodes that misbehave ------------------------------------------------------------------


@dataclass(frozen=True)
class Delays:
    """Seconds to hold answers back, by attempt: ``first[n - 1]`` for the n-th, then ``then``."""

    first: tuple[float, ...] = ()
    then: float = 0.0

    def at(self, attempt: int) -> float:
        return self.first[attempt - 1] if attempt <= len(self.first) else self.then


@dataclass(frozen=True)
class SlowPlan:
    create: Delays = field(default_factory=Delays)  # POST /preheats, counted per blob URL
    status: Delays = field(default_factory=Delays)  # GET /preheats/{id}, counted per task id


class SlowSupernodeProxy(_Served):
    """A slow Dragonfly 1 supernode: forwards to ``upstream`` after holding the answer back as
    the plan of the blob's repository says (the upstream does the real work, even for an answer
    the worker stopped waiting for, as a slow supernode would). A repository can also be
    :meth:`hold` -ed: its tasks answer RUNNING, whatever the upstream says, until released."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._plans: dict[str, SlowPlan] = {}
        self._holds: dict[str, threading.Event] = {}
        self._attempts: Counter[str] = Counter()
        self._task_repo: dict[str, str] = {}
        self.held: list[tuple[str, str, float]] = []  # (repository, what, seconds)
        self._session = requests.Session()
        super().__init__(_ProxyHandler, "slow-supernode")

    def hold(self, repository: str) -> threading.Event:
        """Keep the repository's tasks RUNNING until the returned event is set."""
        with self._lock:
            return self._holds.setdefault(repository, threading.Event())

    def _holding(self, repository: str | None) -> bool:
        with self._lock:
            event = self._holds.get(repository or "")
        return event is not None and not event.is_set()

    def plan(self, repository: str, plan: SlowPlan) -> None:
        with self._lock:
            self._plans[repository] = plan

    def _delay(self, repository: str | None, what: str, key: str) -> float:
        with self._lock:
            plan = self._plans.get(repository or "")
            if plan is None:
                return 0.0
            self._attempts[key] += 1
            delay = (plan.create if what == "create" else plan.status).at(self._attempts[key])
            if delay:
                self.held.append((repository or "", what, delay))
        return delay

    def _remember(self, task_id: str, repository: str | None) -> None:
        if repository:
            with self._lock:
                self._task_repo[task_id] = repository

    def _repository_of_task(self, task_id: str) -> str | None:
        with self._lock:
            return self._task_repo.get(task_id)


class _ProxyHandler(_Handler):
    server_version = "SlowSupernode/1"

    def do_GET(self) -> None:
        proxy: SlowSupernodeProxy = self.owner
        path = urlsplit(self.path).path
        repository = None
        if path.startswith("/preheats/"):
            task_id = path.rsplit("/", 1)[-1]
            repository = proxy._repository_of_task(task_id)
            time.sleep(proxy._delay(repository, "status", f"status:{task_id}"))
        self._forward(b"", hold=proxy._holding(repository))

    def do_POST(self) -> None:
        proxy: SlowSupernodeProxy = self.owner
        body = self._body()
        try:
            url = str(json.loads(body).get("url", ""))
        except (ValueError, AttributeError):
            url = ""
        match = _BLOB_REPO_RE.search(url)
        repository = match.group("repo") if match else None
        time.sleep(proxy._delay(repository, "create", f"create:{url}"))
        answer = self._forward(body)
        if isinstance(answer, dict) and isinstance(answer.get("ID"), str):
            proxy._remember(answer["ID"], repository)

    def _forward(self, body: bytes, hold: bool = False) -> Any:
        proxy: SlowSupernodeProxy = self.owner
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            response = proxy._session.request(
                self.command, f"{proxy.upstream}{self.path}", data=body or None, headers=headers, timeout=10
            )
        except requests.RequestException as exc:
            self._send_json(502, {"message": f"upstream failed: {type(exc).__name__}"})
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        content = response.content
        if hold and isinstance(answer, dict) and answer.get("status") == "SUCCESS":
            answer = {**answer, "status": "RUNNING", "finishTime": None}
            content = json.dumps(answer).encode()
        with contextlib.suppress(OSError):
            self._send(
                response.status_code,
                content,
                {"Content-Type": response.headers.get("Content-Type", "application/json")},
            )
        return answer


class FlippingSupernode(_Served):
    """A stub Dragonfly 1 supernode: every task answers WAITING, then RUNNING, then FAILED with
    ``error_msg`` (one state per status request); the blobs of a repository in :attr:`stuck`
    stay RUNNING forever instead."""

    STATES = ("WAITING", "RUNNING")

    def __init__(self, error_msg: str) -> None:
        self.error_msg = error_msg
        self.stuck: set[str] = set()
        self.long_errors: set[str] = set()  # repositories whose tasks fail with long distinct errors
        self._lock = threading.Lock()
        self._polls: Counter[str] = Counter()
        self.created: dict[str, str] = {}  # task id -> url
        super().__init__(_FlipHandler, "flipping-supernode")

    def task_id_for(self, url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()[:32]

    def _create(self, url: str) -> str:
        task_id = self.task_id_for(url)
        with self._lock:
            self.created[task_id] = url
        return task_id

    def _status(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            if task_id not in self.created:
                return None
            self._polls[task_id] += 1
            polls = self._polls[task_id]
        match = _BLOB_REPO_RE.search(self.created[task_id])
        if polls <= len(self.STATES) or (match is not None and match.group("repo") in self.stuck):
            return {"ID": task_id, "status": self.STATES[min(polls, len(self.STATES)) - 1], "errorMsg": ""}
        error = self.error_msg
        if match is not None and match.group("repo") in self.long_errors:
            error += ": " + " ".join(hashlib.sha256(f"{task_id}{n}".encode()).hexdigest() for n in range(40))
        return {"ID": task_id, "status": "FAILED", "errorMsg": error}


class _FlipHandler(_Handler):
    server_version = "FlippingSupernode/1"

    def do_GET(self) -> None:
        node: FlippingSupernode = self.owner
        path = urlsplit(self.path).path
        if path == "/_ping":
            self._send(200, b"OK", {"Content-Type": "text/plain"})
            return
        answer = node._status(path.rsplit("/", 1)[-1]) if path.startswith("/preheats/") else None
        if answer is None:
            self._send_json(404, {"code": 404, "message": f"no task at {path}"})
        else:
            self._send_json(200, answer)

    def do_POST(self) -> None:
        node: FlippingSupernode = self.owner
        try:
            url = str(json.loads(self._body()).get("url", ""))
        except (ValueError, AttributeError):
            url = ""
        if not url:
            self._send_json(400, {"code": 400, "message": "'url' is required"})
            return
        self._send_json(201, {"ID": node._create(url)})


class HostileSupernode(_Served):
    """A stub Dragonfly 1 supernode whose answers no supernode would give, by the repository of
    the blob: ``deep`` (JSON nested deeper than a parser recurses), ``huge`` (3 MiB of it),
    ``types`` (an ``ID`` that is an object), ``utf8`` (a body that is not UTF-8)."""

    BODIES: Mapping[str, bytes] = {
        "deep": DEEP_JSON,
        "huge": b'{"ID": "' + b"x" * (3 * 1024 * 1024) + b'"}',
        "types": json.dumps({"ID": {"nested": ["object"]}, "status": 7}).encode(),
        "utf8": b'{"ID": "\xff\xfe\xfd", "message": "bad \xff"}',
    }

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.answered: Counter[str] = Counter()
        super().__init__(_HostileHandler, "hostile-supernode")


class _HostileHandler(_Handler):
    server_version = "HostileSupernode/1"

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_ping":
            self._send(200, b"OK", {"Content-Type": "text/plain"})
        else:
            self._send(200, HostileSupernode.BODIES["deep"], {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        node: HostileSupernode = self.owner
        try:
            url = str(json.loads(self._body()).get("url", ""))
        except (ValueError, AttributeError):
            url = ""
        match = _BLOB_REPO_RE.search(url)
        mode = node.modes.get(match.group("repo") if match else "", "deep")
        node.answered[mode] += 1
        body = HostileSupernode.BODIES[mode]
        self._send(201, body, {"Content-Type": "application/json"})


class SilentSupernode:
    """A supernode that accepts connections and never answers: a listening socket nobody accepts
    from (the kernel completes the handshakes, the requests wait for an answer that never comes)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(1024)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def close(self) -> None:
        self._socket.close()


class ClosedPort:
    """A port on 127.0.0.1 held by a socket that never listens: connecting is refused, and no
    other server can take the port meanwhile."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def close(self) -> None:
        self._socket.close()


# -- moto goes away and comes back --------------------------------------------------------------


class MotoOutage:
    """Takes the stack's moto down and brings it back on the same port with its state
    (``MotoServer.go_down`` and ``come_back``)."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self.windows: list[tuple[float, float]] = []  # (down at, up at), time.monotonic()
        self._lock = threading.Lock()

    def _moto(self) -> MotoServer:
        moto = self._stack._moto
        assert moto is not None, "the stack is not started"
        return moto

    def stop(self) -> float:
        with self._lock:
            self._moto().go_down()
            down = time.monotonic()
            self.windows.append((down, float("nan")))
            log.warning("moto stopped (%s)", self._stack.moto_url)
            return down

    def start(self) -> None:
        with self._lock:
            self._moto().come_back()
            down, _ = self.windows[-1]
            self.windows[-1] = (down, time.monotonic())
            log.warning("moto started again on %s with its state", self._stack.moto_url)

    def outage(self, seconds: float, until: Callable[[], bool] | None = None, longest: float = 60.0) -> None:
        """Stop now, and start again on another thread once ``seconds`` have passed and ``until``
        holds (at most ``longest`` seconds in all): an outage that must meet a step lasts until one
        did, however the steps happen to be timed."""
        self.stop()
        down = time.monotonic()

        def restart() -> None:
            time.sleep(seconds)
            while until is not None and not until() and time.monotonic() - down < longest:
                time.sleep(0.05)
            self.start()

        threading.Thread(target=restart, name="moto-outage", daemon=True).start()


# -- the worker dies between steps --------------------------------------------------------------


class WorkerKilled(Exception):
    """Raised inside a step where the worker "dies"."""


class InvocationCrashed(RuntimeError):
    """Raised out of the worker's handler: the invocation died, its whole batch comes back."""


@dataclass(frozen=True)
class Fired:
    what: str
    repository: str
    task_id: str
    at: float


class WorkerFaults:
    """Faults between the worker's steps, keyed by the repository of the task's image.

    - ``kill_after_progress_save``: after ``start`` saved the resolved blobs (dispatched, not yet
      handed over to a check), once.
    - ``kill_after_send``: after the check message ``seq`` was sent and before the save that
      records it, once.
    - ``after_progress_save``: a hook run once right after that save (the step then carries on).

    A kill raises :class:`WorkerKilled` in the step, and the handler then raises
    :class:`InvocationCrashed` for the batch, so no message of that batch is deleted.
    """

    def __init__(self) -> None:
        self.kill_after_progress_save: set[str] = set()
        self.kill_after_send: dict[str, int] = {}
        self.after_progress_save: dict[str, Callable[[], None]] = {}
        self.fired: list[Fired] = []
        self.crashed_batches = 0
        self.crashed_tasks: set[str] = set()  # killed tasks whose invocation then crashed
        self.aws_failures: Counter[str] = Counter()  # the service's table writes and sends that failed
        self.when_fired: dict[str, Callable[[], None]] = {}  # by repository, after its fault fired
        self.checks_sent: dict[str, list[int]] = {}  # by task id: the seq of every check it sent
        self.retry_delays: list[float] = []  # every backoff a failed step asked SQS for
        self._lock = threading.Lock()
        self._task_repository: dict[str, str] = {}
        self._done: set[tuple[str, str]] = set()
        self._killed_pending_crash: set[str] = set()

    def aws_failure_count(self) -> int:
        with self._lock:
            return sum(self.aws_failures.values())

    def _once(self, what: str, repository: str, task_id: str) -> bool:
        with self._lock:
            if (what, repository) in self._done:
                return False
            self._done.add((what, repository))
            self.fired.append(Fired(what, repository, task_id, time.monotonic()))
            then = self.when_fired.get(repository)
        if then is not None:
            then()
        return True

    def _killed(self, task_id: str, what: str) -> WorkerKilled:
        with self._lock:
            self._killed_pending_crash.add(task_id)
        return WorkerKilled(f"worker killed {what} (task {task_id})")

    def _counted(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:
            with self._lock:
                self.aws_failures[f"{what}: {type(exc).__name__}"] += 1
            raise

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch the layer's modules the local Lambda runtime uses: call after the stack started
        (its runtime imports the layer afresh) and before the worker's first invocation."""
        sqs = importlib.import_module("preheat.adapters.sqs")
        dynamodb = importlib.import_module("preheat.adapters.dynamodb")
        queue = importlib.import_module("preheat.entrypoints.queue")
        models = importlib.import_module("preheat.models")
        faults = self
        original_save = dynamodb.DynamoDBTaskStore.save
        original_send = sqs.SqsTaskQueue.send
        original_retry_later = sqs.SqsTaskQueue.retry_later
        original_handle_steps = queue.handle_steps

        def save(store: Any, task: Any, expected_check_seq: int) -> bool:
            repository = _repository_of(task.url)
            with faults._lock:
                faults._task_repository[task.task_id] = repository
            saved: bool = faults._counted("save", original_save, store, task, expected_check_seq)
            progress = saved and task.blobs and not task.dispatched and task.status.value == "RUNNING"
            if progress:
                hook = faults.after_progress_save.get(repository)
                if hook is not None and faults._once(
                    "hook after the progress save", repository, task.task_id
                ):
                    hook()
                if repository in faults.kill_after_progress_save and faults._once(
                    "kill after the progress save", repository, task.task_id
                ):
                    raise faults._killed(task.task_id, "after the progress save")
            return saved

        def send(queue_adapter: Any, message: Any, delay_seconds: int = 0) -> None:
            faults._counted("send", original_send, queue_adapter, message, delay_seconds)
            with faults._lock:
                repository = faults._task_repository.get(message.task_id, "")
                if message.step.value == "check":
                    faults.checks_sent.setdefault(message.task_id, []).append(message.seq)
            seq = faults.kill_after_send.get(repository)
            if (
                message.step.value == "check"
                and seq == message.seq
                and faults._once(f"kill after sending check {seq}", repository, message.task_id)
            ):
                raise faults._killed(message.task_id, f"after sending check {seq}, before its save")

        def retry_later(queue_adapter: Any, receipt_handle: str, delay_seconds: float) -> None:
            faults._counted("retry_later", original_retry_later, queue_adapter, receipt_handle, delay_seconds)
            with faults._lock:
                faults.retry_delays.append(delay_seconds)

        def handle_steps(event: dict[str, Any], context: Any) -> Any:
            task_ids = {models.WorkerMessage.from_json(record["body"]).task_id for record in event["Records"]}
            response = original_handle_steps(event, context)
            with faults._lock:
                killed = task_ids & faults._killed_pending_crash
                faults._killed_pending_crash -= killed
                if killed:
                    faults.crashed_batches += 1
                    faults.crashed_tasks |= killed
            if killed:
                raise InvocationCrashed(f"the invocation died with its batch of {len(task_ids)}")
            return response

        monkeypatch.setattr(dynamodb.DynamoDBTaskStore, "save", save)
        monkeypatch.setattr(sqs.SqsTaskQueue, "send", send)
        monkeypatch.setattr(sqs.SqsTaskQueue, "retry_later", retry_later)
        # functions/worker/app.py imports handle_steps when an environment starts (cold start).
        monkeypatch.setattr(queue, "handle_steps", handle_steps)


def _repository_of(url: str) -> str:
    """``rel/x-0`` of ``127.0.0.1:PORT/rel/x-0:v1``; the file name of a file URL."""
    if "://" in url:
        return url.rsplit("/", 1)[-1]
    return url.split("/", 1)[-1].rsplit(":", 1)[0]


# -- the SQS poller, surviving an outage --------------------------------------------------------


class SurvivingSqsPoller(SqsPoller):
    """``local.poller.SqsPoller`` whose threads survive a batch that cannot be deleted.

    ``SqsPoller._run`` guards its ``receive_message`` but not ``handle_batch``, whose
    ``delete_message_batch`` is outside any ``try``: when SQS is unreachable just as a batch
    finishes, the exception ends that polling thread for good, and once every thread is gone
    nothing is received again. Lambda's event source mapping retries instead (the messages come
    back after their visibility timeout), which is what this does.
    """

    failed_batches = 0
    _count_lock = threading.Lock()

    def handle_batch(self, sqs: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        try:
            super().handle_batch(sqs, messages)
        except Exception:
            with SurvivingSqsPoller._count_lock:
                SurvivingSqsPoller.failed_batches += 1
            log.warning("%s: batch of %d not deleted; it comes back", self.function, len(messages))
