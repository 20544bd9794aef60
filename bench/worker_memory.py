"""Worker memory: the peak RSS of a fresh worker process resolving (and preheating) a 1000-layer image
whose manifest weighs 1 MiB, and a hostile index.

    .venv/bin/python -m bench.worker_memory [--layers 1000] [--manifest-mib 1] [--no-step]
        [--hostile-children 8] [--hostile-child-mib 4]

What it runs against, on 127.0.0.1: the stub registry of ``bench.registry_resolve`` (Bearer token
auth; every blob answered with a 307 to a presigned-looking URL on a stub storage origin, which
answers ranged GETs), with no delay, serving a synthetic OCI manifest of ``--layers`` layers padded
with annotations to just under ``--manifest-mib`` MiB (the registry client's limit,
``PREHEAT_MAX_MANIFEST_BYTES``, is 1 MiB by default); and a
stub Dragonfly 1 supernode that accepts every create and reports every task SUCCESS.

In a fresh Python process set up as Lambda sets up the worker function (its directory and the
shared layer on ``sys.path``, the template's and Lambda's variables, tracing on under a trace id,
dummy AWS credentials) it:

1. imports the worker's handler module (the baseline every invocation pays);
2. resolves the image with the registry client the worker builds: the manifest, then a redirect and
   a storage answer per blob (the figure);
3. unless ``--no-step``, runs the worker's whole ``start`` step on it: resolve again, create a
   supernode task per blob, record the progress (the task store's real encoding, into an in-memory
   DynamoDB client) and watch the tasks to SUCCESS.

Then, in another fresh worker process, it resolves a hostile index (:class:`HostileIndex`: 8 children,
each a 4 MiB image manifest listing the empty layer tens of thousands of times) and reports that
process's peak RSS; the resolution fails, what is measured is what failing costs.

It reports the process's peak RSS after each stage (``VmHWM``, as ``bench.cold_start`` reads it).
Target: under 128 MiB, the smallest Lambda memory size. Results go to ``bench/results/worker_memory.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.cold_start import PEAK_RSS_KB, TEMPLATE, functions_of, lambda_environment
from bench.common import figure, figure_rows, table, write_result
from bench.registry_resolve import DelayedOrigins
from local.template import Template
from preheat.settings import DEFAULT_MAX_MANIFEST_BYTES
from testing.stub_server import StubRequest, StubResponse, StubServer

NAME = "worker_memory"
WORKER = "WorkerFunction"
TARGET_MIB = 128
MANIFEST_LIMIT_BYTES = DEFAULT_MAX_MANIFEST_BYTES  # PREHEAT_MAX_MANIFEST_BYTES's default
PAD_ANNOTATION = "org.example.bench.padding"
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

QUICK_ARGS: list[str] = []

# The child: plain statements, so that it imports nothing the worker itself would not.
CHILD = """\
import time as _time, sys as _sys, importlib as _importlib
_sys.path[:0] = {paths!r}
{peak_rss_kb}
def _peak_mib():
    return _peak_kb() / 1024

_report = {{"start_mib": _peak_mib()}}
_importlib.import_module({module!r})
_report["import_mib"] = _peak_mib()

from preheat.adapters.registry import HttpRegistryClient
from preheat.models import Credentials, ImageReference
from preheat.settings import get_settings

_settings = get_settings()
if {hostile!r}:
    from preheat.errors import PreheatError
    _started = _time.perf_counter()
    try:
        HttpRegistryClient(_settings).resolve_image(ImageReference.parse({hostile!r}), Credentials())
        _report["hostile_outcome"] = "resolved"
    except PreheatError as _exc:
        _report["hostile_outcome"] = str(_exc)[:300]
    _report["hostile_seconds"] = _time.perf_counter() - _started
    _report["hostile_mib"] = _peak_mib()
    import json as _json
    print(_json.dumps(_report))
    raise SystemExit(0)
_image = ImageReference.parse({image!r})
_started = _time.perf_counter()
_resolution = HttpRegistryClient(_settings).resolve_image(_image, Credentials())
_report["resolve_seconds"] = _time.perf_counter() - _started
if len(_resolution.blobs) != {blobs}:
    raise SystemExit(f"resolved {{len(_resolution.blobs)}} blobs, not {blobs}")
_report["resolve_mib"] = _peak_mib()
del _resolution

if {step!r}:
    import uuid
    from datetime import timedelta
    from preheat import bootstrap
    from preheat.adapters.dynamodb import DynamoDBTaskStore
    from preheat.adapters.sqs import SqsTaskQueue
    from preheat.models import PreheatType, Step, Task, TaskStatus, WorkerMessage, utcnow
    from preheat.worker import Worker

    class _Table:
        item = None
        progress_bytes = 0

        def put_item(self, **call):
            self.item = call["Item"]

        def get_item(self, **call):
            return {{"Item": self.item}}

        def update_item(self, **call):
            blobs = call["ExpressionAttributeValues"].get(":blobs")
            if blobs:
                self.progress_bytes = max(self.progress_bytes, len(blobs["B"]))

    class _Queue:
        def send_message(self, **call):
            return {{}}

    _table = _Table()
    _store = DynamoDBTaskStore(_settings, client=_table)
    _now = utcnow()
    _task = Task(str(uuid.uuid4()), PreheatType.IMAGE, {image!r}, TaskStatus.RUNNING, _now,
                 _now + timedelta(minutes=30))
    _store.create(_task)
    _worker = Worker(_store, SqsTaskQueue(_settings, client=_Queue()), HttpRegistryClient(_settings),
                     bootstrap.supernode_driver(), _settings)
    _started = _time.perf_counter()
    _done = _worker.handle(WorkerMessage(_task.task_id, Step.START), time_budget_seconds=60)
    _report["step_seconds"] = _time.perf_counter() - _started
    if _done is None or _done.status is not TaskStatus.SUCCESS:
        raise SystemExit(f"the start step left the task {{_done and _done.status}}: "
                         f"{{_done and _done.message}}")
    _report["step_mib"] = _peak_mib()
    _report["progress_bytes"] = _table.progress_bytes

import json as _json
print(_json.dumps(_report))
"""


def padded_manifest(manifest: bytes, size: int) -> bytes:
    """``manifest`` with an annotation on each layer that brings it to just under ``size`` bytes."""
    document = json.loads(manifest)
    layers = document["layers"]
    base = len(json.dumps(document).encode())
    # Each annotation adds its key, quotes, colon, braces and the "annotations" key around the value.
    overhead = len(json.dumps({"annotations": {PAD_ANNOTATION: ""}})) + 2
    per_layer = max(0, (size - base) // len(layers) - overhead)
    for layer in layers:
        layer["annotations"] = {PAD_ANNOTATION: "x" * per_layer}
    padded = json.dumps(document).encode()
    while len(padded) > size and per_layer > 0:  # rounding: trim until it fits
        per_layer -= 1
        for layer in layers:
            layer["annotations"][PAD_ANNOTATION] = "x" * per_layer
        padded = json.dumps(document).encode()
    return padded


class HostileIndex:
    """A registry (anonymous) serving an index of ``children`` platform images, each an image manifest
    of ``child_bytes`` bytes that lists the empty layer over and over: what issue 22 saw raise a
    worker's peak RSS by 876 MiB (8 children of 4 MiB). Each child differs by its config digest, so
    that its digest is its own; every body matches the digest the index names."""

    EMPTY_LAYER = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"

    def __init__(self, children: int = 8, child_bytes: int = 4 * 1024 * 1024) -> None:
        layer = {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": self.EMPTY_LAYER,
            "size": 32,
        }
        per_layer = len(json.dumps(layer)) + 2
        self.manifests: dict[str, bytes] = {}
        entries = []
        for number in range(children):
            config = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2}
            config["digest"] = "sha256:" + hashlib.sha256(f"config {number}".encode()).hexdigest()
            child = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config,
                    "layers": [layer] * max(1, child_bytes // per_layer - 2),
                }
            ).encode()
            digest = "sha256:" + hashlib.sha256(child).hexdigest()
            self.manifests[digest] = child
            entries.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "size": len(child),
                    "platform": {"os": "linux", "architecture": f"arch{number}"},
                }
            )
        self.manifests["hostile"] = json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        ).encode()
        self.child_bytes = len(next(iter(self.manifests.values())))
        self.server = StubServer(self._answer)

    @property
    def image(self) -> str:
        return f"{self.server.host}/hostile/index:hostile"

    def _answer(self, request: StubRequest) -> StubResponse:
        reference = request.path.rpartition("/manifests/")[2]
        body = self.manifests.get(reference)
        if body is None:
            return StubResponse.error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        kind = "index" if reference == "hostile" else "manifest"
        return StubResponse(200, body, {"Content-Type": f"application/vnd.oci.image.{kind}.v1+json"})


class StubSupernode:
    """A Dragonfly 1 supernode that accepts every create (a new id each) and reports every task done."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.server = StubServer(self._answer)

    def _answer(self, request: StubRequest) -> StubResponse:
        if request.method == "POST" and request.path == "/preheats":
            return StubResponse.json({"ID": f"task-{next(self._ids)}"}, status=201)
        if request.method == "GET" and request.path.startswith("/preheats/"):
            task_id = request.path.removeprefix("/preheats/")
            return StubResponse.json({"ID": task_id, "status": "SUCCESS", "errorMsg": ""})
        return StubResponse.json({"code": 404, "message": "no route"}, status=404)


def measure(layers: int, manifest_bytes: int, step: bool) -> dict[str, Any]:
    template = Template.load(TEMPLATE)
    [worker] = functions_of(template, [WORKER])
    origins = DelayedOrigins(layers, 0.0)
    supernode = StubSupernode()
    try:
        origins.manifest = padded_manifest(origins.manifest, manifest_bytes)
        started = time.perf_counter()
        report = _run_child(
            worker, supernode, image=origins.image, blobs=len(origins.blob_digests), step=step
        )
        report["wall_seconds"] = time.perf_counter() - started
        report["manifest_bytes"] = len(origins.manifest)
        report["blobs"] = len(origins.blob_digests)
        report["registry_requests"] = len(origins.registry.requests) + len(origins.storage.requests)
        report["supernode_requests"] = len(supernode.server.requests)
        return report
    finally:
        origins.close()
        supernode.server.close()


def measure_hostile(children: int, child_bytes: int) -> dict[str, Any]:
    """A fresh worker resolving :class:`HostileIndex`: its peak RSS and how the resolution ended."""
    template = Template.load(TEMPLATE)
    [worker] = functions_of(template, [WORKER])
    hostile = HostileIndex(children, child_bytes)
    supernode = StubSupernode()
    try:
        report = _run_child(worker, supernode, image="", blobs=0, step=False, hostile=hostile.image)
        report["hostile_children"] = children
        report["hostile_child_bytes"] = hostile.child_bytes
        report["hostile_manifest_requests"] = len(hostile.server.requests)
        return report
    finally:
        hostile.server.close()
        supernode.server.close()


def _run_child(
    worker: Any, supernode: StubSupernode, *, image: str, blobs: int, step: bool, hostile: str = ""
) -> dict[str, Any]:
    env = {
        **lambda_environment(worker),
        "PREHEAT_SUPERNODES": supernode.server.url,
        "PREHEAT_INSECURE_REGISTRIES": "127.0.0.1",
        # The stubs listen on loopback, which the worker refuses unless allowed (as locally).
        "PREHEAT_ALLOWED_NETWORKS": "127.0.0.0/8",
        "_X_AMZN_TRACE_ID": TRACE_HEADER,
    }
    script = CHILD.format(
        paths=[str(worker.spec.code_uri), *(str(path) for path in worker.layer_dirs)],
        module=worker.spec.handler.rpartition(".")[0],
        image=image,
        blobs=blobs,
        step=step,
        hostile=hostile,
        peak_rss_kb=PEAK_RSS_KB,
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=worker.spec.code_uri,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the worker process failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(layers: int, step: bool, measured: Mapping[str, Any]) -> dict[str, Any]:
    figures = {
        "resolve_peak_rss": figure(
            round(measured["resolve_mib"], 1),
            TARGET_MIB,
            "below",
            "MiB",
            label=f"worker peak RSS, resolving {layers} layers",
            detail=(
                f"{measured['manifest_bytes'] / 2**20:.2f} MiB manifest, {measured['blobs']} blobs in "
                f"{measured['resolve_seconds']:.2f} s; after import {measured['import_mib']:.1f} MiB"
            ),
        )
    }
    if step:
        figures["start_step_peak_rss"] = figure(
            round(measured["step_mib"], 1),
            TARGET_MIB,
            "below",
            "MiB",
            label=f"worker peak RSS, whole start step, {layers} layers",
            detail=(
                f"resolve, {measured['blobs']} creates, progress write "
                f"({measured['progress_bytes'] / 1024:.0f} KiB), watch: {measured['step_seconds']:.2f} s"
            ),
        )
    if "hostile_mib" in measured:
        figures["hostile_index_peak_rss"] = figure(
            round(measured["hostile_mib"], 1),
            TARGET_MIB,
            "below",
            "MiB",
            label=(
                f"worker peak RSS, hostile index ({measured['hostile_children']} x "
                f"{measured['hostile_child_bytes'] / 2**20:.1f} MiB manifests of empty layers)"
            ),
            detail=(
                f"{measured['hostile_manifest_requests']} manifest requests, "
                f"{measured['hostile_seconds']:.2f} s: {measured['hostile_outcome'][:120]}"
            ),
        )
    return {
        "benchmark": NAME,
        "command": "python -m bench.worker_memory",
        "setup": {
            "layers": layers,
            "blobs": measured["blobs"],
            "manifest_bytes": measured["manifest_bytes"],
            "whole_start_step": step,
            "server": (
                "stub registry (token auth, 307 to presigned storage URLs) and stub supernode, no delay"
            ),
        },
        "measured": {
            key: round(value, 3) if isinstance(value, float) else value for key, value in measured.items()
        },
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    measured = result["measured"]
    stages = [
        ("start", "start_mib"),
        ("import", "import_mib"),
        ("resolve", "resolve_mib"),
        ("step", "step_mib"),
    ]
    peaks = ", ".join(f"{name} {measured[key]:.1f}" for name, key in stages if key in measured)
    return "\n".join(
        [
            f"worker memory: a fresh worker process, {result['setup']['layers']} layers, "
            f"{result['setup']['manifest_bytes'] / 2**20:.2f} MiB manifest; peak RSS (MiB) after: {peaks}",
            table(figure_rows(result["figures"])),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1000, help="layers of the image (default 1000)")
    parser.add_argument(
        "--manifest-mib", type=float, default=1.0, help="the manifest's size, at most 1 MiB (default 1)"
    )
    parser.add_argument("--no-step", dest="step", action="store_false", help="resolve only")
    parser.add_argument(
        "--hostile-children",
        type=int,
        default=8,
        help="children of the hostile index, 0 to skip it (default 8)",
    )
    parser.add_argument(
        "--hostile-child-mib", type=float, default=4.0, help="each hostile child's size in MiB (default 4)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.layers < 1 or not 0 < args.manifest_mib <= MANIFEST_LIMIT_BYTES / 2**20:
        parser.error("--layers must be at least 1 and --manifest-mib in (0, 1]")
    # Just under the size: the registry client accepts at most 1 MiB, which is what is measured.
    size = min(int(args.manifest_mib * 2**20), MANIFEST_LIMIT_BYTES) - 1024
    measured = measure(args.layers, size, args.step)
    if args.hostile_children > 0:
        hostile = measure_hostile(args.hostile_children, int(args.hostile_child_mib * 2**20))
        measured.update({key: value for key, value in hostile.items() if key.startswith("hostile_")})
    result = report(args.layers, args.step, measured)
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
