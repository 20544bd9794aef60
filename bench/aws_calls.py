"""AWS calls per task: the DynamoDB and SQS requests the project's own code makes from POST to SUCCESS.

    .venv/bin/python -m bench.aws_calls [--layers 1,100] [--runs 3]

What it runs: the local stack (the real handlers, moto in server mode, the SQS poller) against a
real CNCF Distribution registry holding an image per layer count, and the reference Dragonfly 1
supernode, which finishes each blob as soon as it has downloaded it: the task ends within the
worker's first step (its watch window), with no check message re-queued.

How it counts: a botocore ``before-call`` hook on the project's botocore session
(``preheat.adapters.aws.session()``), which every client the adapters build comes from, hooked once
the local stack has started (which resets it, as a new execution environment); the local SQS poller,
standing in for Lambda's event source mapping, and this benchmark's own reads of the table use
sessions of their own and are not counted. Each run is one POST through the local API; the
benchmark then reads the task from the table (uncounted) until it is no longer RUNNING, and waits
until no call has been made for a moment, so that the last write is counted. No status is read
through the API: how often a caller polls is the caller's business, not the task's.

The figure counts DynamoDB and SQS calls (any other service's are listed beside it). The dedup
key's Secrets Manager read is not among them: powertools' ``get_secret`` caches it for an hour per
execution environment, through a session of its own, so it is not a cost of each task.

Target: the same count for every layer count, and at most 10.
Results go to ``bench/results/aws_calls.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.common import (
    CallCounter,
    api_session,
    figure,
    figure_rows,
    quiet_logs,
    table,
    write_result,
)
from local.aws import client as local_client
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, make_oci_layout, missing_tools
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from preheat.adapters import aws

NAME = "aws_calls"
REPOSITORY_PREFIX = "bench/calls"
TARGET_MAX_CALLS = 10
SETTLE_SECONDS = 0.5
# What the figure counts; any other service's calls are listed beside it.
COUNTED_SERVICES = ("dynamodb", "sqs")
# Every blob of the largest image may download at once: the task ends within the first step.
MAX_SUPERNODE_DOWNLOADS = 256
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}

QUICK_ARGS = ["--runs", "1"]


def push_image(registry: RegistryServer, scratch: Path, layers: int, tags: Sequence[str]) -> str:
    """An image of ``layers`` layers (unlike any other image's), under every tag; its repository."""
    repository = f"{REPOSITORY_PREFIX}-{layers}"
    contents = [f"calls {layers} layer {n}\n".encode() for n in range(layers)]
    layout = make_oci_layout(scratch / f"layers-{layers}", contents)
    for tag in tags:
        # skopeo skips the blobs the registry holds already: every tag after the first is cheap.
        registry.push(layout, f"{repository}:{tag}")
    return repository


def wait_for_verdict(dynamodb: Any, table_name: str, task_id: str, timeout: float = 60.0) -> str:
    """The task's status once it is no longer RUNNING, read straight from the table (uncounted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = dynamodb.get_item(TableName=table_name, Key={"pk": {"S": task_id}}).get("Item")
        status = None if item is None else str(item["status"]["S"])
        if status is not None and status != "RUNNING":
            return status
        time.sleep(0.02)
    raise RuntimeError(f"task {task_id} still RUNNING after {timeout:g} s")


def settle(counter: CallCounter, quiet: float = SETTLE_SECONDS, limit: float = 10.0) -> None:
    """Wait until no call has been counted for ``quiet`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    seen, since = counter.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter.total()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def measure(layer_counts: Sequence[int], runs: int) -> dict[int, list[dict[str, Any]]]:
    missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed (apt-get install docker-registry skopeo)")
    tags = [f"run{n}" for n in range(runs)]
    counter = CallCounter()
    results: dict[int, list[dict[str, Any]]] = {layers: [] for layers in layer_counts}
    session = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-aws-calls-") as scratch_dir:
            scratch = Path(scratch_dir)
            with RegistryServer(scratch / "registry") as registry:
                repositories = {n: push_image(registry, scratch / "layouts", n, tags) for n in layer_counts}
                with (
                    ReferenceSupernode(
                        scratch / "cache", max_concurrent_downloads=MAX_SUPERNODE_DOWNLOADS
                    ).start() as supernode,
                    LocalStack(
                        supernodes=[supernode.url], cache_dir=scratch / "unused", extra_env=QUIET_FUNCTIONS
                    ) as stack,
                    api_session() as http,
                ):
                    # Hooked after the stack started: starting it resets the session, as a new
                    # execution environment would.
                    session = aws.session()
                    session.register("before-call", counter.on_call)
                    session.register("before-send", counter.on_send)
                    dynamodb = local_client("dynamodb", stack.moto_url)
                    table_name = stack.table_name("TasksTable")
                    for tag in tags:
                        for layers in layer_counts:
                            # Every blob downloads afresh: a blob the supernode holds already would
                            # end the task at dispatch, one write sooner than a real first preheat.
                            for supernode_task in supernode.tasks():
                                supernode.delete(supernode_task)
                            settle(counter)
                            counter.take()
                            answer = http.post(
                                f"{stack.api_url}/api/preheat",
                                json={
                                    "type": "image",
                                    "url": f"{registry.host}/{repositories[layers]}:{tag}",
                                },
                                timeout=30,
                            ).json()
                            task_id = answer["data"]["taskId"]
                            status = wait_for_verdict(dynamodb, table_name, task_id)
                            settle(counter)
                            calls, requests_sent = counter.take()
                            results[layers].append(
                                {
                                    "status": status,
                                    "calls": dict(sorted(calls.items())),
                                    "total": sum(
                                        count
                                        for name, count in calls.items()
                                        if name.split(":")[0] in COUNTED_SERVICES
                                    ),
                                    "http_requests": requests_sent,
                                    "supernode_tasks": len(supernode.tasks()),
                                }
                            )
                            if status != "SUCCESS":
                                raise RuntimeError(f"task {task_id} of {layers} layers ended {status}")
    finally:
        if session is not None:
            session.unregister("before-call", counter.on_call)
            session.unregister("before-send", counter.on_send)
    return results


def report(
    layer_counts: Sequence[int], runs: int, results: Mapping[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    cases: dict[str, Any] = {}
    totals: dict[int, int] = {}
    for layers in layer_counts:
        records = results[layers]
        most = max(records, key=lambda record: record["total"])
        totals[layers] = most["total"]
        steady = len({record["total"] for record in records}) == 1
        breakdown = ", ".join(f"{name} {count}" for name, count in most["calls"].items())
        cases[f"layers_{layers}"] = {
            "layers": layers,
            "blobs": layers + 1,
            "runs": records,
            "calls_per_task": most["total"],
            "calls_by_operation": most["calls"],
            "same_in_every_run": steady,
        }
        figures[f"layers_{layers}"] = figure(
            most["total"],
            TARGET_MAX_CALLS,
            "at most",
            "calls",
            label=f"AWS calls per task, {layers} layer{'s' if layers != 1 else ''}",
            detail=breakdown,
        )
    spread = max(totals.values()) - min(totals.values())
    counts = " vs ".join(f"{totals[n]} ({n})" for n in layer_counts)
    figures["spread"] = figure(
        spread,
        0,
        "exactly",
        "calls",
        label="AWS calls: most minus fewest",
        detail=f"by layer count: {counts}",
    )
    return {
        "benchmark": NAME,
        "command": "python -m bench.aws_calls",
        "setup": {
            "layer_counts": list(layer_counts),
            "runs": runs,
            "counted": "botocore before-call on the adapters' botocore session (the project's clients only)",
            "supernode": (
                "reference Dragonfly 1 supernode, no delays: every task ends in the worker's first step"
            ),
        },
        "cases": cases,
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        f"AWS calls per task, POST to SUCCESS, {setup['runs']} run(s) per image "
        "(the most seen is the figure)",
        table(figure_rows(result["figures"])),
    ]
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts, got {text!r}") from None
    if len(counts) < 2 or min(counts) < 1:
        raise argparse.ArgumentTypeError("give at least two layer counts, each at least 1")
    return list(dict.fromkeys(counts))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aws_calls", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=_counts, default=[1, 100], help="layer counts (default 1,100)")
    parser.add_argument("--runs", type=int, default=3, help="tasks per layer count (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    quiet_logs()
    results = measure(args.layers, args.runs)
    result = report(args.layers, args.runs, results)
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
