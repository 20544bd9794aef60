"""The Dragonfly 2 scheduler driver: ``scheduler.v2.Scheduler`` over gRPC (schedulers v2.3.4 and
later), with the Dragonfly project's own bindings (``dragonfly-api``).

Preheat. With URL-based task ids (``PREHEAT_DRAGONFLY2_TASK_IDS=url``) every blob is one
``PreheatFile`` of the very URL the worker resolved, the URL nodes ask for: the scheduler computes
the task id from it as a node does, so each layer's task is exact. A ``PreheatImage`` would make the
scheduler resolve the image again, by its own rules (its own platform default, its own Accept list,
its own blob URLs). With blob-digest task ids (``blob-digest``) a ``PreheatFile`` cannot create
them (it has no such field), so each platform manifest the blobs came from is one ``PreheatImage``
with ``enable_task_id_based_blob_digest``, by digest, sent once per manifest however many blobs it
lists. ``scope`` is always sent (the scheduler's validator refuses an empty one).

Truth per peer. ``StatFile`` (URL mode) and ``StatImage`` (blob-digest mode, one call a look for
all the layers of a manifest) say which peers hold a blob and whether each has finished;
``ListHosts`` (read at most every HOSTS_REUSE_SECONDS) says which are seed peers. The warm rule is
in ``dragonfly2_peers``. A blob is never FAILED by a look: it stays pending, saying which peers it
waits for, until they finish or the task's deadline ends it naming them.

Bound. One look round asks about LOOKS_PER_ROUND pending blobs of a task at most (the worker takes
them in turn); in blob-digest mode the blobs of one manifest share one ``StatImage`` a look.
``calls`` counts every RPC, for tests and benchmarks.

Errors. ``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` (each call's deadline is
``PREHEAT_SUPERNODE_TIMEOUT``) and ``RESOURCE_EXHAUSTED`` are retried with the retry policy, then
raised as TransientFailure naming the scheduler; ``INVALID_ARGUMENT`` and other refusals are
PermanentFailure quoting the scheduler's message, scrubbed of the request's credentials.

Credentials. A blob's headers go in the preheat's ``header`` and nowhere else. ``StatImage`` makes
the scheduler read the manifest again, so the headers of a manifest's preheat are kept in this
process's memory (never stored, never logged) for MANIFEST_HEADERS_SECONDS for its looks; a look
after that (a later check step) asks without them, which a registry that needs them refuses:
the look is then retried until the deadline, naming the refusal.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from preheat.adapters.dragonfly2_peers import NORMAL_HOST_TYPE, Host, judge
from preheat.adapters.quoting import scrub, secrets_of, truncate
from preheat.errors import NotSupported, PermanentFailure, TransientFailure
from preheat.models import Blob, BlobProgress, BlobState, Credentials, PeerCopy, Targeting
from preheat.ports import Holding, PeerSeen, SupernodeTask
from preheat.retry import Jitter, RetryPolicy
from preheat.settings import Settings
from preheat.task_ids import (
    DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS,
    dragonfly2_blob_digest_task_id,
    dragonfly2_task_id,
)

T = TypeVar("T")

SUBJECT = "Dragonfly 2 scheduler"
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.2
# Pending blobs of one task one look round asks about (see the module notes).
LOOKS_PER_ROUND = 8
# A scheduler's host list changes when peers come and go, not between two looks.
HOSTS_REUSE_SECONDS = 5.0
# A StatImage answers for every layer of its manifest: the looks of one round (a few ms apart)
# share it, the next round (50 ms later at the soonest) asks again.
IMAGE_ANSWER_REUSE_SECONDS = 0.04
# A manifest's PreheatImage is sent once for all its blobs; a start step redelivered later sends it
# again (the scheduler joins the tasks it already has).
MANIFEST_PREHEAT_SECONDS = 60.0
MANIFEST_HEADERS_SECONDS = 300.0
# ... and a refused one is not asked again for the rest of that step's blobs.
REFUSAL_REUSE_SECONDS = 5.0
MAX_CACHED = 256
MAX_PING_THREADS = 16
# Blobs one verify asks about at once (each a StatFile, or a share of a manifest's StatImage).
MAX_VERIFY_THREADS = 16

_RETRIED = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class Dragonfly2SchedulerDriver:
    """The ``SupernodeDriver`` for Dragonfly 2 schedulers (``settings.supernodes`` are their gRPC
    ``host:port`` addresses, plaintext). See the module notes."""

    def __init__(
        self,
        settings: Settings,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        looks_per_round: int = LOOKS_PER_ROUND,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._settings = settings
        self._retry = RetryPolicy(attempts, backoff_seconds, jitter=Jitter.EQUAL)
        self._sleep = sleep
        self._looks_per_round = looks_per_round
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        # (what, target, key) -> (when, answer): host lists, image answers, manifests preheated,
        # and the headers of a manifest's preheat (memory only: see the module notes).
        self._memo: OrderedDict[tuple[str, str, str], tuple[float, Any]] = OrderedDict()
        self._memo_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self.calls: Counter[str] = Counter()  # RPCs made, by method name

    # -- the port ------------------------------------------------------------------------------

    @property
    def targets(self) -> tuple[str, ...]:
        return self._settings.supernodes

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def looks_per_round(self) -> int | None:
        return self._looks_per_round

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        return [self.create(target, blob) for blob in blobs]

    def _digest_mode(self, blob: Blob | BlobProgress, url: str) -> bool:
        """Whether ``blob`` has a blob-digest task id: the setting, a registry blob URL, and the
        manifest that lists it (a storage URL or a plain file keeps its URL-based id)."""
        return (
            self._settings.dragonfly2_task_ids == "blob-digest"
            and blob.manifest_url is not None
            and dragonfly2_blob_digest_task_id(url) is not None
        )

    def node_task_id(self, blob: Blob) -> str:
        if self._digest_mode(blob, blob.url):
            digest_id = dragonfly2_blob_digest_task_id(blob.url)
            assert digest_id is not None
            return digest_id
        settings = self._settings
        return dragonfly2_task_id(
            blob.url,
            self._filtered_query_params(blob.filter),
            settings.dragonfly2_tag,
            settings.dragonfly2_application,
            settings.dragonfly2_piece_length,
        )

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        task_id = self.node_task_id(blob)
        secrets = secrets_of(blob.headers.values())
        if self._digest_mode(blob, blob.url):
            assert blob.manifest_url is not None
            self._preheat_manifest(target, blob, secrets)
            return SupernodeTask(task_id, BlobState.PENDING)
        request = scheduler_pb2.PreheatFileRequest(url=blob.url, **self._common(blob.filter))
        request.header.update(blob.headers.reveal())
        self._aim(request, blob.targeting)
        self._call(target, "PreheatFile", request, f"accept the preheat of {blob.label}", secrets)
        return SupernodeTask(task_id, BlobState.PENDING)

    def _preheat_manifest(self, target: str, blob: Blob, secrets: list[str]) -> None:
        manifest = blob.manifest_url
        assert manifest is not None
        # Once per manifest and aim: another task's preheat of it elsewhere is not this one.
        key = ("preheated", target, f"{manifest} {blob.targeting!r}")
        refused_key = ("refused", target, key[2])
        with self._key_lock(key):
            if self._recall(key, MANIFEST_PREHEAT_SECONDS) is not None:
                return
            # The manifest's refusal is each of its blobs': the others are not sent it again.
            refused = self._recall(refused_key, REFUSAL_REUSE_SECONDS)
            if isinstance(refused, PermanentFailure | TransientFailure):
                raise type(refused)(str(refused))
            request = scheduler_pb2.PreheatImageRequest(
                url=manifest, enable_task_id_based_blob_digest=True, **self._common(blob.filter)
            )
            request.header.update(blob.headers.reveal())
            self._aim(request, blob.targeting)
            what = f"accept the preheat of the manifest of {blob.label}"
            try:
                self._call(target, "PreheatImage", request, what, secrets)
            except (PermanentFailure, TransientFailure) as exc:
                self._remember(refused_key, exc)
                raise
            self._remember(key, True)
            self._remember(("headers", target, manifest), blob.headers)

    def look(self, blob: BlobProgress, targeting: Targeting) -> SupernodeTask:
        target = blob.target
        url = blob.url or blob.label
        task_id = blob.supernode_task_id or ""
        hosts = self._hosts(target)
        if self._digest_mode(blob, url):
            holders = self._image_holders(target, blob, url, targeting)
        else:
            request = scheduler_pb2.StatFileRequest(url=url, **self._common(()))
            answer = self._call(target, "StatFile", request, f"answer the status of {blob.label}", [])
            holders = tuple(
                PeerCopy(peer.hostname, peer.ip, any(item.is_finished for item in peer.cached_files))
                for peer in answer.peers
                if peer.cached_files
            )
        scope = targeting.scope or self._settings.dragonfly2_scope
        verdict = judge(blob.label, holders, hosts, scope, targeting)
        waiting = f"{verdict.waiting} (scope {scope})" if verdict.waiting else None
        return SupernodeTask(task_id, verdict.state, waiting, holders)

    def holders(self, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
        """A look per blob (StatFile or StatImage, and ListHosts), judged by the same warm rule as
        the worker's; in parallel, the host lists and image answers shared as the looks share them."""
        if not blobs:
            return []
        threads = min(len(blobs), MAX_VERIFY_THREADS)
        with ThreadPoolExecutor(threads, thread_name_prefix="df2s-verify") as pool:
            return list(pool.map(lambda blob: self._holding(blob, targeting), blobs))

    def _holding(self, blob: BlobProgress, targeting: Targeting) -> Holding:
        try:
            seen = self.look(blob, targeting)
        except TransientFailure as exc:
            return Holding(
                peers=tuple(PeerSeen(p.hostname, p.ip, None) for p in blob.peers),
                unreachable=blob.target,
                error=str(exc),
            )
        except PermanentFailure as exc:
            return Holding(error=str(exc))
        peers = tuple(PeerSeen(p.hostname, p.ip, p.finished) for p in seen.peers)
        return Holding(peers=peers, warm=seen.state is BlobState.SUCCESS, error=seen.error)

    def evict(self, blobs: Sequence[BlobProgress]) -> list[str]:
        # The scheduler's DeleteTask (scheduler.v2) only forgets a task in the scheduler's own
        # resource graph: no peer is told to remove its data, so the next pull is served from the
        # peers' caches as before (see README, "Evict"). The manager's delete_task job is what
        # makes every peer's daemon delete it.
        raise NotSupported(
            "Dragonfly 2 schedulers cannot evict: a scheduler's DeleteTask does not remove peers' "
            "data; configure the Dragonfly 2 manager (PREHEAT_SUPERNODE_API=dragonfly2), whose "
            "delete_task job does"
        )

    def ping(self) -> Mapping[str, str | None]:
        targets = self.targets
        if not targets:
            return {}
        # In parallel so that one dead scheduler costs the check one timeout, not one each.
        with ThreadPoolExecutor(min(len(targets), MAX_PING_THREADS), thread_name_prefix="df2s-ping") as pool:
            return dict(zip(targets, pool.map(self._ping_one, targets), strict=True))

    # -- reading answers -----------------------------------------------------------------------

    def _image_holders(
        self, target: str, blob: BlobProgress, url: str, targeting: Targeting
    ) -> tuple[PeerCopy, ...]:
        manifest = blob.manifest_url
        assert manifest is not None
        answer = self._stat_image(target, manifest, blob.label, targeting)
        digest_id = dragonfly2_blob_digest_task_id(url)
        holders = []
        for peer in answer.peers:
            layers = [
                layer
                for layer in peer.cached_layers
                if dragonfly2_blob_digest_task_id(layer.url) == digest_id
            ]
            if layers:
                holders.append(PeerCopy(peer.hostname, peer.ip, any(layer.is_finished for layer in layers)))
        return tuple(holders)

    def _stat_image(self, target: str, manifest: str, label: str, targeting: Targeting) -> Any:
        """The manifest's StatImage (its answer covers every peer, whatever the scope: one answer
        serves every look at the manifest's layers for IMAGE_ANSWER_REUSE_SECONDS)."""
        key = ("image", target, manifest)
        with self._key_lock(key):
            cached = self._recall(key, IMAGE_ANSWER_REUSE_SECONDS)
            if cached is not None:
                return cached
            headers = self._recall(("headers", target, manifest), MANIFEST_HEADERS_SECONDS)
            request = scheduler_pb2.StatImageRequest(
                url=manifest,
                enable_task_id_based_blob_digest=True,
                scope=targeting.scope or self._settings.dragonfly2_scope,
                **self._common(()),
            )
            secrets: list[str] = []
            if isinstance(headers, Credentials):
                request.header.update(headers.reveal())
                secrets = secrets_of(headers.values())
            answer = self._call(
                target, "StatImage", request, f"answer the status of the manifest of {label}", secrets
            )
            self._remember(key, answer)
            return answer

    def _hosts(self, target: str) -> tuple[Host, ...]:
        key = ("hosts", target, "")
        with self._key_lock(key):
            cached = self._recall(key, HOSTS_REUSE_SECONDS)
            if cached is not None:
                hosts: tuple[Host, ...] = cached
                return hosts
            answer = self._call(target, "ListHosts", scheduler_pb2.ListHostsRequest(), "list its hosts", [])
            hosts = tuple(
                Host(host.hostname, host.ip, host.type != NORMAL_HOST_TYPE) for host in answer.hosts
            )
            self._remember(key, hosts)
            return hosts

    # -- requests ------------------------------------------------------------------------------

    def _filtered_query_params(self, own: Sequence[str]) -> tuple[str, ...]:
        configured = self._settings.dragonfly2_filtered_query_params
        return tuple(dict.fromkeys((*(configured or DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS), *own)))

    def _common(self, own_filter: Sequence[str]) -> dict[str, Any]:
        """What makes the task id, as nodes are configured: tag, application, piece length and
        the filtered query parameters (always sent, so the scheduler's default cannot differ)."""
        settings = self._settings
        fields: dict[str, Any] = {"filtered_query_params": list(self._filtered_query_params(own_filter))}
        if settings.dragonfly2_tag:
            fields["tag"] = settings.dragonfly2_tag
        if settings.dragonfly2_application:
            fields["application"] = settings.dragonfly2_application
        if settings.dragonfly2_piece_length is not None:
            fields["piece_length"] = settings.dragonfly2_piece_length
        return fields

    def _aim(self, request: Any, targeting: Targeting) -> None:
        request.scope = targeting.scope or self._settings.dragonfly2_scope
        request.ips.extend(targeting.ips)
        if targeting.count:
            request.count = targeting.count
        if targeting.percentage:
            request.percentage = targeting.percentage

    def _call(self, target: str, method: str, request: Any, what: str, secrets: Sequence[str]) -> Any:
        """``method`` on ``target`` within the per-call deadline; see the module notes for what is
        retried and what each failure becomes."""
        stub = scheduler_pb2_grpc.SchedulerStub(self._channel(target))  # type: ignore[no-untyped-call]
        timeout = self._settings.supernode_timeout_seconds
        reason = ""
        for attempt in range(1, self._retry.attempts + 1):
            if attempt > 1:
                self._sleep(self._retry.delay(attempt - 1))
            with self._lock:
                self.calls[method] += 1
            try:
                return getattr(stub, method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                code = _code(exc)
                if code in _RETRIED:
                    reason = (
                        f"{code.name} (each call's deadline is {timeout}s)"
                        if code is grpc.StatusCode.DEADLINE_EXCEEDED
                        else code.name
                    )
                    continue
                detail = truncate(scrub(_details(exc), secrets), keep_end=True) or "no message"
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    detail += " (schedulers serve preheat and stat over gRPC since v2.3.4)"
                raise PermanentFailure(
                    f"{SUBJECT} {target} refused to {what}: {code.name}: {detail}"
                ) from None
        raise TransientFailure(
            f"{SUBJECT} {target} did not {what} after {self._retry.attempts} attempts: {reason}"
        )

    def _ping_one(self, target: str) -> str | None:
        timeout = self._settings.check_timeout_seconds
        stub = health_pb2_grpc.HealthStub(self._channel(target))
        with self._lock:
            self.calls["Health/Check"] += 1
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = _code(exc)
            return f"timed out after {timeout}s" if code is grpc.StatusCode.DEADLINE_EXCEEDED else code.name
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
        return None

    def _channel(self, target: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = grpc.insecure_channel(target)
            return channel

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    # -- short-lived memory --------------------------------------------------------------------

    def _key_lock(self, key: tuple[str, str, str]) -> threading.Lock:
        with self._lock:
            return self._memo_locks.setdefault(key, threading.Lock())

    def _recall(self, key: tuple[str, str, str], seconds: float) -> Any:
        with self._lock:
            entry = self._memo.get(key)
        if entry is None or time.monotonic() - entry[0] >= seconds:
            return None
        return entry[1]

    def _remember(self, key: tuple[str, str, str], value: Any) -> None:
        with self._lock:
            self._memo[key] = (time.monotonic(), value)
            self._memo.move_to_end(key)
            # A warm Lambda serves task after task: the least recently used are dropped.
            while len(self._memo) > MAX_CACHED:
                dropped, _ = self._memo.popitem(last=False)
                self._memo_locks.pop(dropped, None)


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return details.strip() if isinstance(details, str) else ""
