"""How long resolving a 100-layer image takes when every registry response comes 50 ms late.

    .venv/bin/python -m bench.registry_resolve [--layers 100] [--delay-ms 50] [--runs 5]

What it runs against: a stub registry on 127.0.0.1 (two :class:`testing.stub_server.StubServer` origins,
the standard library's threaded HTTP server: no Docker, nothing to install) that behaves like a
registry whose blobs live in S3:

- ``/v2/bench/app/manifests/v1`` needs a Bearer token: without one it answers 401 with a challenge
  naming its ``/token`` realm; with one it serves a synthetic OCI manifest of ``--layers`` layers.
- ``/v2/bench/app/blobs/<digest>`` answers 307 to a presigned-looking URL (``X-Amz-*``) on a second
  origin, the "storage", which answers a ranged GET with the first byte (206), as S3 does, and any
  other GET with the whole (1 MiB) blob.
- Every answer (401, token, manifest, 307, storage) is held back ``--delay-ms`` before it is sent.

A client that sends one request after another needs 3 round trips for the manifest (401, token,
manifest) and 2 per blob (registry, then storage): 3 + 2 x 101 = 205 for 100 layers and a config,
10.25 s at 50 ms. The figure is the median of ``--runs`` resolutions, each by a fresh client (a
cold Lambda: no cached token, no open connection). The stub also counts token requests, the most
requests it had in flight at once, and the connections the client opened, which show that the
token is fetched once and that the pool's connections are reused rather than opened per request.

Results go to ``bench/results/registry_resolve.json``; each figure is ``{value, target, met}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import RESULTS
from local.oci_layout import digest_of
from preheat.adapters.registry import DEFAULT_MAX_WORKERS, HttpRegistryClient
from preheat.models import Credentials, ImageReference
from preheat.settings import Settings
from testing.stub_server import Handler, StubRequest, StubResponse, StubServer

NAME = "registry_resolve"
REPOSITORY = "bench/app"
TAG = "v1"
TOKEN = "bench-token"
STORAGE_BLOB_BYTES = 1024 * 1024
AMZ_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=1200&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
)
# Targets: what issue 3 asks of a 100-layer image at 50 ms a response.
TARGET_SECONDS = 1.0
SEQUENTIAL_FLOOR_SECONDS = 5.0
TARGET_RATIO = SEQUENTIAL_FLOOR_SECONDS / TARGET_SECONDS


class DelayedOrigins:
    """The stub registry and its storage: two :class:`StubServer` origins whose every answer is held
    back ``delay``, counting the requests in flight at once."""

    def __init__(self, layers: int, delay: float) -> None:
        self.delay = delay
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        layer_blobs = [f"bench layer {number}\n".encode() for number in range(layers)]
        self.blob_digests = [digest_of(config), *(digest_of(layer) for layer in layer_blobs)]
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest_of(layer),
                        "size": STORAGE_BLOB_BYTES,
                    }
                    for layer in layer_blobs
                ],
            }
        ).encode()
        self.storage = StubServer(self._delayed(self._storage))
        self.registry = StubServer(self._delayed(self._registry))

    @property
    def image(self) -> str:
        return f"{self.registry.host}/{REPOSITORY}:{TAG}"

    def mark(self) -> tuple[int, int]:
        """Where the request logs are now; reset the in-flight peak."""
        with self._lock:
            self.peak_in_flight = 0
        return len(self.registry.requests), len(self.storage.requests)

    def since(self, mark: tuple[int, int]) -> list[StubRequest]:
        return self.registry.requests[mark[0] :] + self.storage.requests[mark[1] :]

    def close(self) -> None:
        self.registry.close()
        self.storage.close()

    def _delayed(self, answer: Handler) -> Handler:
        def handler(request: StubRequest) -> StubResponse:
            with self._lock:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                time.sleep(self.delay)
                return answer(request)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return handler

    def _registry(self, request: StubRequest) -> StubResponse:
        if request.path == "/token":
            return StubResponse.json({"token": TOKEN})
        if request.header("Authorization") != f"Bearer {TOKEN}":
            challenge = (
                f'Bearer realm="{self.registry.url}/token",service="bench",'
                f'scope="repository:{REPOSITORY}:pull"'
            )
            return StubResponse.error(
                401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": challenge}
            )
        prefix = f"/v2/{REPOSITORY}/"
        if request.path == f"{prefix}manifests/{TAG}":
            return StubResponse(
                200, self.manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            )
        if request.path.startswith(f"{prefix}blobs/"):
            digest = request.path.removeprefix(f"{prefix}blobs/")
            signature = hashlib.sha256(digest.encode()).hexdigest()
            return StubResponse.redirect(
                f"{self.storage.url}/bucket/{digest}?{AMZ_QUERY.format(signature=signature)}"
            )
        return StubResponse.error(404, "NAME_UNKNOWN", "repository name not known to registry")

    def _storage(self, request: StubRequest) -> StubResponse:
        # S3 in one respect: a ranged GET gets the bytes asked for, any other GET the whole blob.
        if request.header("Range") == "bytes=0-0":
            return StubResponse(206, b"\0", {"Content-Range": f"bytes 0-0/{STORAGE_BLOB_BYTES}"})
        return StubResponse(200, b"\0" * STORAGE_BLOB_BYTES, {"Content-Type": "application/octet-stream"})


@dataclass(frozen=True)
class Run:
    seconds: float
    requests: int
    token_requests: int
    connections: int
    peak_in_flight: int


def measure(
    layers: int, delay: float, runs: int, max_workers: int, registry_url_requests: list[int] | None = None
) -> tuple[list[Run], int]:
    """``runs`` resolutions of the stub's image, each by a fresh client; and the blob count. The
    requests one resolution in the default mode (registry blob URLs) costs go to ``registry_url_requests``."""
    registry_url_requests = registry_url_requests if registry_url_requests is not None else []
    # The stub origins listen on loopback, which the outbound policy refuses unless allowed.
    # What is timed is the spec's literal mode, where every blob's redirect is resolved; registry
    # blob URLs (the default) need no request per blob, counted apart (registry_url_requests).
    settings = Settings(
        insecure_registries=frozenset({"127.0.0.1"}),
        registry_timeout_seconds=10.0,
        allowed_networks=("127.0.0.0/8", "::1/128"),
        layer_urls="storage",
    )
    origins = DelayedOrigins(layers, delay)
    results: list[Run] = []
    try:
        image = ImageReference.parse(origins.image)
        for _ in range(runs):
            client = HttpRegistryClient(settings, max_workers=max_workers)
            mark = origins.mark()
            started = time.perf_counter()
            resolution = client.resolve_image(image, Credentials())
            seconds = time.perf_counter() - started
            if [blob.digest for blob in resolution.blobs] != origins.blob_digests:
                raise RuntimeError("the client resolved other blobs than the image has")
            if not all(blob.url.startswith(origins.storage.url) and blob.filter for blob in resolution.blobs):
                raise RuntimeError("a blob was not resolved to its storage URL")
            seen = origins.since(mark)
            results.append(
                Run(
                    seconds=seconds,
                    requests=len(seen),
                    token_requests=sum(request.path == "/token" for request in seen),
                    connections=len({(request.host, request.peer) for request in seen}),
                    peak_in_flight=origins.peak_in_flight,
                )
            )
        mark = origins.mark()
        HttpRegistryClient(replace(settings, layer_urls="registry")).resolve_image(image, Credentials())
        registry_url_requests.append(len(origins.since(mark)))
        return results, len(origins.blob_digests)
    finally:
        origins.close()


def figure(value: float, target: float, met: bool, unit: str, goal: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "target": target, "met": met, "unit": unit, "goal": goal, **extra}


def report(
    layers: int,
    delay: float,
    runs: list[Run],
    blobs: int,
    max_workers: int,
    registry_requests: int | None = None,
) -> dict[str, Any]:
    median = statistics.median(run.seconds for run in runs)
    round_trips = 3 + 2 * blobs  # 401, token, manifest; then a redirect and a storage answer per blob
    sequential = round_trips * delay
    ratio = sequential / median if median > 0 else float("inf")
    tokens = max(run.token_requests for run in runs)
    peak = max(run.peak_in_flight for run in runs)
    connections = max(run.connections for run in runs)
    # Each worker keeps one connection to the registry and one to the storage, plus the token's.
    connection_bound = 2 * max_workers + 1
    parallel_target = min(max_workers, blobs)
    return {
        "benchmark": NAME,
        "command": "python -m bench.registry_resolve",
        "setup": {
            "layers": layers,
            "blobs": blobs,
            "delay_ms": round(delay * 1000, 3),
            "runs": len(runs),
            "max_workers": max_workers,
            "server": (
                "stub registry on 127.0.0.1 (Bearer token auth, synthetic OCI manifest, every blob "
                "307 to a presigned S3-style URL on a stub storage origin answering ranged GETs), "
                "every response delayed by delay_ms"
            ),
        },
        "runs_seconds": [round(run.seconds, 4) for run in runs],
        "requests_per_resolve": max(run.requests for run in runs),
        "requests_per_resolve_registry_urls": registry_requests,
        "figures": {
            "resolve_seconds": figure(
                round(median, 4), TARGET_SECONDS, median < TARGET_SECONDS, "s", "below", statistic="median"
            ),
            "sequential_estimate_seconds": figure(
                round(sequential, 4),
                SEQUENTIAL_FLOOR_SECONDS,
                sequential > SEQUENTIAL_FLOOR_SECONDS,
                "s",
                "above",
                round_trips=round_trips,
            ),
            "speedup": figure(round(ratio, 2), TARGET_RATIO, ratio >= TARGET_RATIO, "x", "at least"),
            "token_fetches_per_resolve": figure(tokens, 1, tokens == 1, "requests", "exactly"),
            "peak_parallel_requests": figure(
                peak, parallel_target, peak >= parallel_target, "requests", "at least"
            ),
            "connections_per_resolve": figure(
                connections, connection_bound, connections <= connection_bound, "connections", "at most"
            ),
        },
    }


def table(result: dict[str, Any]) -> str:
    setup = result["setup"]
    figures = result["figures"]
    goals = {"below": "<", "above": ">", "at least": ">=", "at most": "<=", "exactly": "="}
    rows = [
        ("resolve time (median)", figures["resolve_seconds"]),
        (
            f"sequential estimate ({figures['sequential_estimate_seconds']['round_trips']} round trips x r)",
            figures["sequential_estimate_seconds"],
        ),
        ("ratio (sequential / measured)", figures["speedup"]),
        ("token fetches per resolve", figures["token_fetches_per_resolve"]),
        ("peak parallel requests", figures["peak_parallel_requests"]),
        ("connections opened per resolve", figures["connections_per_resolve"]),
    ]

    def shown(value: float, unit: str) -> str:
        if unit == "s":
            return f"{value:.3f} s"
        if unit == "x":
            return f"{value:.1f}x"
        return f"{value:g}"

    lines = [
        f"registry resolve: {setup['layers']} layers ({setup['blobs']} blobs), r = {setup['delay_ms']:g} ms "
        f"on every response, median of {setup['runs']} runs, {setup['max_workers']} workers",
        f"{'figure':<48} {'value':>10}  {'target':>9}  met",
    ]
    for label, item in rows:
        target = f"{goals[item['goal']]} {shown(item['target'], item['unit'])}"
        met = "yes" if item["met"] else "NO"
        lines.append(f"{label:<48} {shown(item['value'], item['unit']):>10}  {target:>9}  {met}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_resolve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--layers", type=int, default=100, help="layers of the image (default 100)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added to every response (default 50)")
    parser.add_argument("--runs", type=int, default=5, help="resolutions measured (default 5)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_MAX_WORKERS, help="the client's pool (default: its own)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.runs < 1 or args.delay_ms < 0 or args.workers < 1:
        parser.error("--layers, --runs and --workers must be at least 1, --delay-ms at least 0")
    delay = args.delay_ms / 1000
    registry_url_requests: list[int] = []
    runs, blobs = measure(args.layers, delay, args.runs, args.workers, registry_url_requests)
    result = report(args.layers, delay, runs, blobs, args.workers, registry_url_requests[0])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(
        f"registry requests per resolve: {result['requests_per_resolve']} resolving storage URLs "
        f"(PREHEAT_LAYER_URLS=storage), {result['requests_per_resolve_registry_urls']} handing over "
        "registry blob URLs (the default)"
    )
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
