"""A small Dragonfly 2 scheduler for the driver's unit tests: a real gRPC server in-process, serving
PreheatFile, PreheatImage, StatFile, StatImage, ListHosts and grpc.health.v1 with the project's
bindings. It downloads nothing: the test says which peer holds which URL (``hold``), keeps every
request it was sent, and can be told to fail or hang a method."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


@dataclass
class Peer:
    hostname: str
    ip: str
    seed: bool = False


@dataclass
class SchedulerDouble(scheduler_pb2_grpc.SchedulerServicer):
    peers: list[Peer] = field(default_factory=list)
    # URL -> hostname -> finished
    held: dict[str, dict[str, bool]] = field(default_factory=dict)
    # manifest URL -> its layers' URLs (what StatImage resolves)
    images: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    # method -> (code, details) raised for the next calls, one per entry
    failures: dict[str, list[tuple[grpc.StatusCode, str]]] = field(default_factory=dict)
    # methods that wait on ``release`` (a scheduler that never answers)
    hang: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, url: str, hostname: str, finished: bool = True) -> None:
        with self.lock:
            self.held.setdefault(url, {})[hostname] = finished

    def sent(self, method: str) -> list[Any]:
        with self.lock:
            return [request for name, request in self.requests if name == method]

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests.append((method, request))
            queued = self.failures.get(method)
            failure = queued.pop(0) if queued else None
        if method in self.hang:
            self.release.wait(30)
        if failure is not None:
            context.abort(failure[0], failure[1])

    def _peer(self, hostname: str) -> Peer:
        return next(peer for peer in self.peers if peer.hostname == hostname)

    def PreheatFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("PreheatFile", request, context)
        if not request.scope:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "invalid PreheatFileRequest.Scope: value is empty"
            )
        return empty_pb2.Empty()

    def PreheatImage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("PreheatImage", request, context)
        if not request.scope:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "invalid PreheatImageRequest.Scope: value is empty"
            )
        return empty_pb2.Empty()

    def StatFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("StatFile", request, context)
        with self.lock:
            holders = dict(self.held.get(request.url, {}))
        return scheduler_pb2.StatFileResponse(
            peers=[
                scheduler_pb2.PeerFile(
                    ip=self._peer(name).ip,
                    hostname=name,
                    cached_files=[scheduler_pb2.File(url=request.url, is_finished=finished)],
                )
                for name, finished in holders.items()
            ]
        )

    def StatImage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("StatImage", request, context)
        layers = self.images.get(request.url)
        if layers is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"failed to resolve manifests: {request.url}")
        peers: dict[str, list[Any]] = {}
        with self.lock:
            for url in layers or []:
                for name, finished in self.held.get(url, {}).items():
                    peers.setdefault(name, []).append(scheduler_pb2.Layer(url=url, is_finished=finished))
        return scheduler_pb2.StatImageResponse(
            image=scheduler_pb2.Image(layers=[scheduler_pb2.Layer(url=url) for url in layers or []]),
            peers=[
                scheduler_pb2.PeerImage(ip=self._peer(name).ip, hostname=name, cached_layers=cached)
                for name, cached in peers.items()
            ],
        )

    def ListHosts(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListHosts", request, context)
        return scheduler_pb2.ListHostsResponse(
            hosts=[
                common_pb2.Host(
                    id=f"{peer.ip}-{peer.hostname}",
                    type=1 if peer.seed else 0,
                    hostname=peer.hostname,
                    ip=peer.ip,
                )
                for peer in self.peers
            ]
        )


@dataclass
class RunningScheduler:
    servicer: SchedulerDouble
    health: health.HealthServicer
    address: str


@contextmanager
def running_scheduler(servicer: SchedulerDouble) -> Iterator[RunningScheduler]:
    """``servicer`` served on 127.0.0.1 at a free port, with the standard health service SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RunningScheduler(servicer, checker, f"127.0.0.1:{port}")
    finally:
        servicer.release.set()
        server.stop(grace=None)
