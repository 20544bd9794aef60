"""Calls a Dragonfly 2 scheduler receives per second of a watched task, in both task-id modes.

    .venv/bin/python -m bench.scheduler_calls [--layers 1,10,100] [--hold 10] [--modes url,blob-digest]

What it runs: a real registry (``docker-registry``, images pushed with ``skopeo``) holding an image
of each size (one config blob plus ``--layers`` layers), the local stack (real handlers, moto, the
SQS poller) with ``PREHEAT_SUPERNODE_API=dragonfly2-scheduler`` and the service's defaults (scope
``single_seed_peer``), and the reference scheduler of ``local/`` over real gRPC, its peers holding
every blob downloading for ``--hold`` seconds after its bytes are in
(``ReferenceScheduler.peer_delay``): a task the worker watches for about that long. One task at a
time, so every call the scheduler records in its window is that task's; a fresh scheduler and stack
per task-id mode (``PREHEAT_DRAGONFLY2_TASK_IDS``: ``url``, each blob a ``PreheatFile`` and looked
at by ``StatFile``; ``blob-digest``, a ``PreheatImage`` per manifest and ``StatImage`` looks).

The figure, per image and mode: ``StatFile``, ``StatImage``, ``ListHosts``, ``PreheatFile`` and
``PreheatImage`` calls the scheduler received from the submit to SUCCESS shown (health checks are
the check function's, not counted), over those seconds: the load one running task puts on a
scheduler. The figure counts its looks (``StatFile``, ``StatImage``, ``ListHosts``) per task-second;
the creates (one ``PreheatFile`` per blob, or one ``PreheatImage`` per manifest) are the work asked
for, once, and are listed beside it. The target is the driver's own bound, whatever the image:
``LOOKS_PER_ROUND`` stats a look round, rounds at most every ``PREHEAT_CHECK_INTERVAL`` (0.25 s),
and one ``ListHosts`` every ``HOSTS_REUSE_SECONDS``: 32.2 calls a task-second.

Results go to ``bench/results/scheduler_calls.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.aws_calls import push_image
from bench.common import api_session, figure, figure_rows, quiet_logs, table, write_result
from local.dragonfly2_scheduler import ReferenceScheduler
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, missing_tools
from local.stack import LocalStack
from preheat.adapters.dragonfly2_scheduler import HOSTS_REUSE_SECONDS, LOOKS_PER_ROUND
from preheat.settings import Settings

NAME = "scheduler_calls"
MODES = ("url", "blob-digest")
COUNTED = ("PreheatFile", "PreheatImage", "StatFile", "StatImage", "ListHosts")
LOOKS = ("StatFile", "StatImage", "ListHosts")
TARGET_CALLS_PER_TASK_SECOND = round(
    LOOKS_PER_ROUND / Settings().check_interval_seconds + 1 / HOSTS_REUSE_SECONDS, 1
)
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
READ_EVERY_SECONDS = 0.2
WAIT_SECONDS = 300.0

QUICK_ARGS = ["--layers", "1,10", "--hold", "5"]


def watch_one(stack: LocalStack, scheduler: ReferenceScheduler, image: str) -> dict[str, Any]:
    """Preheat ``image``, read its status until it ends; the scheduler's calls meanwhile."""
    before = len(scheduler.requests)
    with api_session() as http:
        started = time.monotonic()
        answer = http.post(f"{stack.api_url}/api/preheat", json={"type": "image", "url": image}, timeout=30)
        task_id = answer.json()["data"]["taskId"]
        deadline = started + WAIT_SECONDS
        status = "RUNNING"
        while time.monotonic() < deadline:
            status = http.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()["data"]["status"]
            if status != "RUNNING":
                break
            time.sleep(READ_EVERY_SECONDS)
        seconds = time.monotonic() - started
    if status != "SUCCESS":
        raise RuntimeError(f"task {task_id} of {image} ended {status} after {seconds:.0f} s")
    calls = Counter(method for method, _ in scheduler.requests[before:] if method in COUNTED)
    return {
        "task_seconds": round(seconds, 2),
        "calls": {method: calls.get(method, 0) for method in COUNTED},
        "total": sum(calls.values()),
        "per_task_second": round(sum(calls.values()) / seconds, 3),
    }


def measure(layer_counts: Sequence[int], hold: float, modes: Sequence[str]) -> dict[str, dict[int, Any]]:
    missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed (apt-get install docker-registry skopeo)")
    results: dict[str, dict[int, Any]] = {mode: {} for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-calls-") as scratch_dir:
        scratch = Path(scratch_dir)
        with RegistryServer(scratch / "registry") as registry:
            repositories = {n: push_image(registry, scratch / "layouts", n, ["v1"]) for n in layer_counts}
            for mode in modes:
                with (
                    ReferenceScheduler() as scheduler,
                    LocalStack(
                        target="dragonfly2-scheduler",
                        supernodes=[scheduler.address],
                        cache_dir=scratch / f"unused-{mode}",
                        extra_env={**QUIET_FUNCTIONS, "PREHEAT_DRAGONFLY2_TASK_IDS": mode},
                    ) as stack,
                ):
                    # Every peer holds each blob downloading this long after its bytes are in.
                    scheduler.peer_delay(None, hold)
                    for layers in layer_counts:
                        image = f"{registry.host}/{repositories[layers]}:v1"
                        results[mode][layers] = watch_one(stack, scheduler, image)
    return results


def report(layer_counts: Sequence[int], hold: float, results: dict[str, dict[int, Any]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for mode, by_layers in results.items():
        for layers in layer_counts:
            item = by_layers[layers]
            calls = ", ".join(f"{method} {n}" for method, n in item["calls"].items() if n)
            image = f"{layers} layer{'s' if layers != 1 else ''}"
            looks = sum(item["calls"].get(method, 0) for method in LOOKS)
            figures[f"{mode}_{layers}_layers_calls_per_task_second"] = figure(
                round(looks / item["task_seconds"], 1) if item["task_seconds"] else 0.0,
                TARGET_CALLS_PER_TASK_SECOND,
                "at most",
                "calls/s",
                label=f"scheduler looks per task-second, {image}, {mode} ids",
                detail=f"{item['total']} calls in {item['task_seconds']:g} s ({calls}); "
                f"blobs held {hold:g} s",
            )
    return {
        "benchmark": NAME,
        "command": "python -m bench.scheduler_calls",
        "setup": {
            "layers": list(layer_counts),
            "blobs_per_image": [n + 1 for n in layer_counts],
            "hold_seconds": hold,
            "scope": "single_seed_peer (the service's default)",
            "counted": list(COUNTED),
        },
        "results": {mode: {str(n): item for n, item in by.items()} for mode, by in results.items()},
        "figures": figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{NAME}", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="1,10,100", help="layers of each image, comma-separated")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds every peer holds each blob")
    parser.add_argument("--modes", default=",".join(MODES), help="task-id modes, comma-separated")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    layer_counts = [int(part) for part in args.layers.split(",") if part.strip()]
    modes = [part.strip() for part in args.modes.split(",") if part.strip()]
    if set(modes) - set(MODES):
        parser.error(f"--modes: one or both of {', '.join(MODES)}")
    quiet_logs()
    result = report(layer_counts, args.hold, measure(layer_counts, args.hold, modes))
    print(f"scheduler calls per task-second, one task at a time, blobs held {args.hold:g} s")
    print(table(figure_rows(result["figures"])))
    write_result(args.output, result)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
