"""A reference Dragonfly 2 scheduler: ``scheduler.v2.Scheduler`` over real gRPC, with a few peers.

A tool for the Preheat service's tests and for trying ``PREHEAT_SUPERNODE_API=dragonfly2-scheduler``
without a cluster; NOT a scheduler: no P2P, no announcements, tasks kept in memory. It serves, with
the project's bindings (``dragonfly-api``), what the service calls, as dragonfly's
``scheduler/service/service_v2.go`` does:

* ``PreheatFile`` / ``PreheatImage``: validated first as the request validator does (the messages
  of ``scheduler.pb.validate.go``: an absolute ``url``, ``scope`` one of ``single_seed_peer``,
  ``all_seed_peers``, ``all_peers``, a non-zero ``count`` 1..200, ``percentage`` 1..100,
  ``piece_length`` 4..64 MiB, ...; INVALID_ARGUMENT otherwise). ``PreheatImage`` then resolves the
  manifest (:mod:`local.dragonfly2_images`; INVALID_ARGUMENT "failed to resolve manifests: ..."),
  and both answer ``Empty`` while the peers download in the background.
* Peers per scope (``scheduler/job/job.go``): ``single_seed_peer`` one seed peer per task (picked by
  task id), ``all_seed_peers`` the seed peers, ``all_peers`` the normal peers only; for the last two
  ``ips`` (if given), else ``count``, else ``percentage`` (rounded down, at least 1) narrow them. A
  selection that finds nobody (``ips`` matching no peer) is only logged, as the real one does in its
  goroutine; :attr:`ReferenceScheduler.preheats` keeps it.
* Task ids: ``preheat.task_ids.dragonfly2_task_id`` (url, ``filtered_query_params`` or the default
  list, tag, application, piece length); blob-digest ids (``dragonfly2_blob_digest_task_id``) for
  ``PreheatImage``/``StatImage`` blobs when the request sets ``enable_task_id_based_blob_digest`` or
  the scheduler runs with ``digest_ids=True``. ``PreheatFile``/``StatFile`` stay URL-based, as in
  the real scheduler.
* ``StatFile``: the peers holding the URL's task (downloading: ``is_finished`` false; finished:
  true); a peer that failed it or never had it is not listed. ``StatImage``: the image's blob URLs
  (``is_finished`` set when some peer finished it; the real scheduler leaves it unset, so clients
  should read the peers) and, per peer, the layers it holds.
* ``ListHosts``: every peer (``type`` 0 normal, 1 super seed; ``id`` as ``idgen.HostID``), filtered
  by ``type`` when asked.
* ``grpc.health.v1.Health``: SERVING unless :meth:`ReferenceScheduler.set_serving` says otherwise.

Every request is recorded as it arrived, credentials included (:attr:`ReferenceScheduler.requests`),
so a test can prove none was sent. Faults: :meth:`~ReferenceScheduler.hang` (calls are accepted and
never answered until it is lifted or the caller's deadline passes) and
:meth:`~ReferenceScheduler.fail_next` (the next calls answer an error code).

Run it alone with ``python -m local.dragonfly2_scheduler --port 8002``; tests use
:class:`ReferenceScheduler` directly.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import grpc
import requests
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from local.dragonfly2_images import ResolvedImage, ResolveError, resolve_image
from local.dragonfly2_peers import Download, Host, Peers, State, default_hosts
from local.supernode import download_session
from preheat.task_ids import (
    DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS,
    dragonfly2_blob_digest_task_id,
    dragonfly2_task_id,
)

log = logging.getLogger("local.dragonfly2_scheduler")

SERVICE_NAME = "scheduler.v2.Scheduler"
SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
_SCOPE_PATTERN = "^(single_seed_peer|all_seed_peers|all_peers)$"
# Inclusive ranges the validator checks when the optional field is set and not zero.
_RANGES = {
    "piece_length": ("PieceLength", 4194304, 67108864),
    "percentage": ("Percentage", 1, 100),
    "count": ("Count", 1, 200),
    "concurrent_task_count": ("ConcurrentTaskCount", 1, 100),
    "concurrent_layer_count": ("ConcurrentLayerCount", 1, 100),
    "concurrent_peer_count": ("ConcurrentPeerCount", 1, 1000),
}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_Request = TypeVar("_Request", bound=Message)


def validation_error(request: Message) -> str | None:
    """The first complaint of the request validator (``scheduler.pb.validate.go``), or None."""
    name = request.DESCRIPTOR.name
    url = str(getattr(request, "url", ""))
    if _BAD_ESCAPE.search(url) or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return f'invalid {name}.Url: value must be a valid URI | caused by: parse "{url}": invalid URL'
    if not urlsplit(url).scheme:
        return f"invalid {name}.Url: value must be absolute"
    fields = request.DESCRIPTOR.fields_by_name
    if "scope" in fields and name.startswith("Preheat") and request.scope not in SCOPES:
        return f'invalid {name}.Scope: value does not match regex pattern "{_SCOPE_PATTERN}"'
    if "priority" in fields and request.priority not in common_pb2.Priority.values():
        return f"invalid {name}.Priority: value must be one of the defined enum values"
    for field_name, (label, low, high) in _RANGES.items():
        if field_name in fields and request.HasField(field_name):
            value = getattr(request, field_name)
            if value != 0 and not low <= value <= high:
                return f"invalid {name}.{label}: value must be inside range [{low}, {high}]"
    return None


@dataclass(frozen=True)
class Preheat:
    """One preheat the scheduler scheduled: per blob URL, its task id and the peers asked to hold it
    (``error`` when the selection found none)."""

    method: str
    scope: str
    tasks: tuple[tuple[str, str], ...]  # (url, task id)
    hostnames: tuple[str, ...]
    error: str = ""


class _Fault(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ReferenceScheduler:
    """A scheduler on ``host:port`` (0: a free port) with ``seed_peers`` seed peers (``seed-peer-N``,
    127.0.1.N+1) and ``normal_peers`` normal peers (``peer-N``, 127.0.2.N+1), or the given ``hosts``.
    ``with`` it, or :meth:`start` and :meth:`close`; :attr:`address` is ``host:port``.

    For tests: :attr:`requests` (every call, unredacted), :attr:`preheats` (what each preheat
    scheduled), :attr:`hosts`, :meth:`holders` (hostname -> downloading/finished/failed),
    :meth:`errors`, :meth:`finished_at`, :meth:`wait_finished` / :meth:`wait_holders` (on the
    peers' own condition, no polling), :meth:`task_id`; knobs :meth:`set_serving`, :meth:`hang`,
    :meth:`fail_next`, :meth:`peer_delay`, :meth:`fail_peer`, :meth:`evict`.
    """

    def __init__(
        self,
        seed_peers: int = 2,
        normal_peers: int = 3,
        *,
        digest_ids: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        hosts: Sequence[Host] | None = None,
        download_timeout: float = 30.0,
    ) -> None:
        self.digest_ids = digest_ids
        self._host = host
        self._port = port
        self._peers = Peers(
            list(hosts) if hosts is not None else default_hosts(seed_peers, normal_peers),
            download_timeout=download_timeout,
        )
        self._lock = threading.Condition()
        self._requests: list[tuple[str, dict[str, Any]]] = []
        self._preheats: list[Preheat] = []
        self._hanging = False
        self._closing = False
        self._faults: list[tuple[int, grpc.StatusCode, str | None]] = []  # (left, code, method)
        self._server: grpc.Server | None = None
        self._bound_port = 0
        self._health = _Health(self)
        self._session: requests.Session | None = None  # the manifest resolutions'

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._closing = False
        self._session = download_session(4)
        self._peers.start()
        # Enough threads that calls held by hang() do not keep the others from being served.
        server = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="d2-scheduler-rpc"))
        # The generated gRPC modules carry no annotations.
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._bound_port = server.add_insecure_port(f"{self._host}:{self._port}")
        server.start()
        self._server = server
        self.set_serving(True)
        log.info("reference Dragonfly 2 scheduler on %s with %d peers", self.address, len(self.hosts))
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        server.stop(grace=None).wait(5)
        self._peers.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("the scheduler is not started")
        return f"{self._host}:{self._bound_port}"

    # -- inspection for tests --------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        """Every call that arrived, faulted or refused ones too, as (method, request as a dict with
        the proto's field names), UNREDACTED: headers and passwords as sent. Methods: PreheatFile,
        PreheatImage, StatFile, StatImage, ListHosts, and Check (the health service)."""
        with self._lock:
            return list(self._requests)

    @property
    def preheats(self) -> list[Preheat]:
        with self._lock:
            return list(self._preheats)

    @property
    def hosts(self) -> list[Host]:
        return list(self._peers.hosts)

    def holders(self, task_id: str) -> dict[str, State]:
        return self._peers.holders(task_id)

    def errors(self, task_id: str) -> dict[str, str]:
        return self._peers.errors(task_id)

    def finished_at(self, task_id: str) -> dict[str, float]:
        """hostname -> when (``time.time()``) that peer finished the task: where a notice starts."""
        return self._peers.finished_at(task_id)

    def wait_finished(self, task_id: str, count: int, timeout: float) -> bool:
        return self._peers.wait_finished(task_id, count, timeout)

    def wait_holders(self, task_id: str, wanted: Mapping[str, str], timeout: float) -> bool:
        """Whether the holders become exactly ``wanted`` (hostname -> state) within ``timeout``: for
        failures, which ``wait_finished`` does not count."""
        return self._peers.wait_holders(task_id, wanted, timeout)

    def task_id(
        self,
        url: str,
        *,
        tag: str = "",
        application: str = "",
        piece_length: int | None = None,
        filtered_query_params: Sequence[str] = (),
        digest: bool = False,
    ) -> str:
        """The id this scheduler gives ``url`` (blob-digest based when ``digest`` and it is a blob's)."""
        if digest and (by_digest := dragonfly2_blob_digest_task_id(url)) is not None:
            return by_digest
        filtered = tuple(filtered_query_params) or DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS
        return dragonfly2_task_id(url, filtered, tag, application, piece_length)

    # -- knobs -----------------------------------------------------------------------------------

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)

    def hang(self, hanging: bool) -> None:
        """While on, every call (health checks too) is accepted and left unanswered."""
        with self._lock:
            self._hanging = hanging
            self._lock.notify_all()

    def fail_next(
        self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, *, method: str | None = None
    ) -> None:
        """The next ``n`` calls (of ``method`` only, e.g. "PreheatFile" or "Check", when given)
        answer ``code`` before doing anything; they are recorded all the same."""
        with self._lock:
            self._faults.append((n, code, method))

    def peer_delay(self, hostname: str | None, seconds: float) -> None:
        """Keep a peer's tasks downloading for ``seconds`` after their bytes are in (``hostname``
        None: every peer without a delay of its own). A change applies at once to tasks waiting,
        so a long delay holds a peer and 0 releases it."""
        self._peers.set_delay(hostname, seconds)

    def fail_peer(self, hostname: str, failing: bool = True) -> None:
        self._peers.set_failing(hostname, failing)

    def evict(self, task_id: str, hostname: str | None = None) -> int:
        return self._peers.evict(task_id, hostname)

    # -- the calls -------------------------------------------------------------------------------

    def admit(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        """Record the call, then apply the faults: hold it while hanging, or raise a scheduled one."""
        recorded = json_format.MessageToDict(request, preserving_proto_field_name=True)
        with self._lock:
            self._requests.append((method, recorded))
        context.add_callback(self._wake)
        with self._lock:
            while self._hanging and not self._closing and context.is_active():
                self._lock.wait()
            if self._closing:
                raise _Fault(grpc.StatusCode.UNAVAILABLE, "the scheduler is stopping")
            if not context.is_active():
                # The caller gave up while the scheduler hung: nothing of its call may happen now.
                raise _Fault(grpc.StatusCode.CANCELLED, "the caller went away")
            for index, (left, code, only) in enumerate(self._faults):
                if only is None or only == method:
                    if left <= 1:
                        del self._faults[index]
                    else:
                        self._faults[index] = (left - 1, code, only)
                    raise _Fault(code, f"injected fault: {code.name}")

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def preheat_file(self, request: scheduler_pb2.PreheatFileRequest) -> None:
        if request.url.endswith("/"):
            raise _Fault(
                grpc.StatusCode.INVALID_ARGUMENT,
                "failed to list task entries: directories are not served here",
            )
        self._schedule("PreheatFile", request, [request.url], dict(request.header), digest=False)

    def preheat_image(self, request: scheduler_pb2.PreheatImageRequest) -> None:
        resolved = self._resolve(request)
        digest = request.enable_task_id_based_blob_digest or self.digest_ids
        self._schedule(
            "PreheatImage", request, list(resolved.blob_urls), resolved.peer_headers, digest=digest
        )

    def _resolve(
        self, request: scheduler_pb2.PreheatImageRequest | scheduler_pb2.StatImageRequest
    ) -> ResolvedImage:
        if self._session is None:
            raise _Fault(grpc.StatusCode.UNAVAILABLE, "the scheduler is stopping")
        try:
            return resolve_image(
                self._session,
                request.url,
                dict(request.header),
                username=request.username,
                password=request.password,
                platform=request.platform,
            )
        except ResolveError as exc:
            raise _Fault(grpc.StatusCode.INVALID_ARGUMENT, f"failed to resolve manifests: {exc}") from None

    def _task_id_of(self, url: str, request: Any, digest: bool) -> str:
        return self.task_id(
            url,
            tag=request.tag,
            application=request.application,
            piece_length=request.piece_length if request.HasField("piece_length") else None,
            filtered_query_params=list(request.filtered_query_params),
            digest=digest,
        )

    def _schedule(
        self, method: str, request: Any, urls: list[str], headers: dict[str, str], *, digest: bool
    ) -> None:
        tasks = tuple((url, self._task_id_of(url, request, digest)) for url in urls)
        chosen: set[str] = set()
        error = ""
        for url, task_id in tasks:
            try:
                selected = self._select(request, task_id)
            except LookupError as exc:
                error = str(exc)
                log.warning("preheat %s of %s: %s", request.scope, url.split("?", 1)[0], error)
                break
            for host in selected:
                chosen.add(host.hostname)
                self._peers.download(host, Download(task_id, url, headers))
        with self._lock:
            self._preheats.append(Preheat(method, request.scope, tasks, tuple(sorted(chosen)), error))

    def _select(self, request: Any, task_id: str) -> list[Host]:
        """The peers the scope asks for (``scheduler/job/job.go``: the hash ring for one seed peer,
        ``selectSeedPeers``/``selectPeers`` for the others)."""
        seeds = [host for host in self.hosts if host.is_seed]
        if request.scope == "single_seed_peer":
            if not seeds:
                raise LookupError("no seed peer available")
            return [seeds[int(task_id[:15], 16) % len(seeds)]]
        kind = "seed peer" if request.scope == "all_seed_peers" else "peer"
        candidates = seeds if request.scope == "all_seed_peers" else [h for h in self.hosts if not h.is_seed]
        if not candidates:
            raise LookupError(f"has no available {kind}")
        if request.ips:
            picked = [host for host in candidates if host.ip in request.ips]
            if not picked:
                raise LookupError(f"no {kind} found for ips {list(request.ips)}")
            return picked
        if request.HasField("count"):
            return candidates[: min(request.count, len(candidates))]
        if request.HasField("percentage"):
            share = min(len(candidates) * request.percentage // 100, len(candidates))
            return candidates[: max(share, 1) if request.percentage > 0 else share]
        return candidates

    def stat_file(self, request: scheduler_pb2.StatFileRequest) -> scheduler_pb2.StatFileResponse:
        if request.url.endswith("/"):
            raise _Fault(
                grpc.StatusCode.INVALID_ARGUMENT,
                "failed to list task entries: directories are not served here",
            )
        task_id = self._task_id_of(request.url, request, digest=False)
        return scheduler_pb2.StatFileResponse(
            peers=[
                scheduler_pb2.PeerFile(
                    ip=host.ip,
                    hostname=host.hostname,
                    cached_files=[scheduler_pb2.File(url=request.url, is_finished=finished)],
                )
                for host, finished in sorted(self._peers.holding(task_id), key=lambda pair: pair[0].hostname)
            ]
        )

    def stat_image(self, request: scheduler_pb2.StatImageRequest) -> scheduler_pb2.StatImageResponse:
        resolved = self._resolve(request)
        digest = request.enable_task_id_based_blob_digest or self.digest_ids
        layers: list[scheduler_pb2.Layer] = []
        peers: dict[str, scheduler_pb2.PeerImage] = {}
        for url in resolved.blob_urls:
            holding = self._peers.holding(self._task_id_of(url, request, digest))
            layers.append(scheduler_pb2.Layer(url=url, is_finished=any(finished for _, finished in holding)))
            for host, finished in holding:
                peer = peers.setdefault(host.id, scheduler_pb2.PeerImage(ip=host.ip, hostname=host.hostname))
                peer.cached_layers.append(scheduler_pb2.Layer(url=url, is_finished=finished))
        ordered = sorted(peers.values(), key=lambda peer: peer.hostname)
        return scheduler_pb2.StatImageResponse(image=scheduler_pb2.Image(layers=layers), peers=ordered)

    def list_hosts(self, request: scheduler_pb2.ListHostsRequest) -> scheduler_pb2.ListHostsResponse:
        wanted = request.type if request.HasField("type") else None
        return scheduler_pb2.ListHostsResponse(
            hosts=[
                common_pb2.Host(
                    id=host.id,
                    type=host.type,
                    hostname=host.hostname,
                    ip=host.ip,
                    port=host.port,
                    download_port=host.download_port,
                    os="linux",
                    platform="linux",
                )
                for host in self.hosts
                if wanted is None or host.type == wanted
            ]
        )


def _serve(
    scheduler: ReferenceScheduler,
    method: str,
    request: _Request,
    context: grpc.ServicerContext,
    answer: Callable[[], Any],
) -> Any:
    try:
        scheduler.admit(method, request, context)
        problem = validation_error(request) if method != "ListHosts" else None
        if problem is not None:
            raise _Fault(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return answer()
    except _Fault as fault:
        context.abort(fault.code, str(fault))


class _Servicer(scheduler_pb2_grpc.SchedulerServicer):
    """The RPCs the Preheat service uses; every other one answers UNIMPLEMENTED (the base class)."""

    def __init__(self, scheduler: ReferenceScheduler) -> None:
        self._scheduler = scheduler

    def PreheatFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        def answer() -> Any:
            self._scheduler.preheat_file(request)
            return empty_pb2.Empty()

        return _serve(self._scheduler, "PreheatFile", request, context, answer)

    def PreheatImage(self, request: Any, context: grpc.ServicerContext) -> Any:
        def answer() -> Any:
            self._scheduler.preheat_image(request)
            return empty_pb2.Empty()

        return _serve(self._scheduler, "PreheatImage", request, context, answer)

    def StatFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self._scheduler, "StatFile", request, context, lambda: self._scheduler.stat_file(request)
        )

    def StatImage(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self._scheduler, "StatImage", request, context, lambda: self._scheduler.stat_image(request)
        )

    def ListHosts(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self._scheduler, "ListHosts", request, context, lambda: self._scheduler.list_hosts(request)
        )


class _Health(health.HealthServicer):  # type: ignore[misc]  # grpc_health carries no annotations
    """The standard health service, behind the scheduler's faults (hang, fail_next)."""

    def __init__(self, scheduler: ReferenceScheduler) -> None:
        super().__init__()
        self._scheduler = scheduler

    def Check(self, request: Any, context: Any) -> Any:
        try:
            self._scheduler.admit("Check", request, context)
        except _Fault as fault:
            context.abort(fault.code, str(fault))
        return super().Check(request, context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.dragonfly2_scheduler",
        description="Run the reference Dragonfly 2 scheduler (a local tool, not for production).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--seed-peers", type=int, default=2)
    parser.add_argument("--normal-peers", type=int, default=3)
    parser.add_argument(
        "--digest-ids", action="store_true", help="blob-digest task ids for every image's blobs"
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
    with ReferenceScheduler(
        args.seed_peers, args.normal_peers, digest_ids=args.digest_ids, host=args.host, port=args.port
    ) as scheduler:
        print(f"reference Dragonfly 2 scheduler on {scheduler.address}", flush=True)
        # A short wait in a loop so the signal handler runs promptly on every platform.
        while not stop.wait(0.5):
            pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
