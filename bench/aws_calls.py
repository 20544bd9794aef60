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
benchmark then waits for the task's completion event (the last call its worker makes, seen by a hook
on the same session; its status is the run's) and for that worker invocation to end, so that every
call of the task is counted and none of the next. No status is read through the API: how often a
caller polls is the caller's business, not the task's.

The figure counts DynamoDB, SQS and EventBridge calls (the completion event; any other service's are
listed beside it). The dedup
key's Secrets Manager read is not among them: powertools' ``get_secret`` caches it for an hour per
execution environment, through a session of its own, so it is not a cost of each task.

Target: the same count for every layer count, and at most 10.

The cost per 1000 preheats of each image follows from what was measured: the calls, the task item's
size (a DynamoDB write unit per KB), the functions' invocations and their durations at the
template's MemorySize, priced at AWS list prices (``PRICES_USD``), plus what a caller adds (the
POST and one status read through API Gateway and the authorizer). The anchor it is set against is
the monthly cost of the smallest Dragonfly 2 manager deployment (manager, MySQL, Redis); the
target is a day of it.
Results go to ``bench/results/aws_calls.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.common import (
    PRICES_USD,
    SQS_REQUESTS_PER_MESSAGE,
    CallCounter,
    InvocationTimer,
    api_session,
    figure,
    figure_rows,
    quiet_logs,
    table,
    write_result,
)
from local.aws import client as local_client
from local.oci_layout import make_oci_layout
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, missing_tools
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from local.template import Template
from preheat.adapters import aws
from testing.completion_events import CompletionEvents

NAME = "aws_calls"
TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
REPOSITORY_PREFIX = "bench/calls"
TARGET_MAX_CALLS = 10
WORKER = "WorkerFunction"
# What the figure counts; any other service's calls are listed beside it.
COUNTED_SERVICES = ("dynamodb", "sqs", "events")
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


def measure(layer_counts: Sequence[int], runs: int) -> dict[int, list[dict[str, Any]]]:
    missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed (apt-get install docker-registry skopeo)")
    tags = [f"run{n}" for n in range(runs)]
    counter = CallCounter()
    announced = CompletionEvents()
    timer = InvocationTimer()
    results: dict[int, list[dict[str, Any]]] = {layers: [] for layers in layer_counts}
    session = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-aws-calls-") as scratch_dir:
            scratch = Path(scratch_dir)
            with RegistryServer(scratch / "registry") as registry:
                repositories = {n: push_image(registry, scratch / "layouts", n, tags) for n in layer_counts}
                with (
                    # Before the stack: its API stand-in and pollers hold the runtime's invoke.
                    timer,
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
                    announced.register(session)
                    dynamodb = local_client("dynamodb", stack.moto_url)
                    table_name = stack.table_name("TasksTable")
                    for tag in tags:
                        for layers in layer_counts:
                            # Every blob downloads afresh: a blob the supernode holds already would
                            # end the task at dispatch, one write sooner than a real first preheat.
                            for supernode_task in supernode.tasks():
                                supernode.delete(supernode_task)
                            counter.take()
                            timer.take()
                            answer = http.post(
                                f"{stack.api_url}/api/preheat",
                                json={
                                    "type": "image",
                                    "url": f"{registry.host}/{repositories[layers]}:{tag}",
                                },
                                timeout=30,
                            ).json()
                            task_id = answer["data"]["taskId"]
                            # The completion event is the last call of the task's worker, whose
                            # invocation then ends: all the task cost is counted, and nothing after.
                            status = announced.wait(task_id)
                            timer.wait_for(WORKER)
                            calls, requests_sent = counter.take()
                            invocations = timer.take()
                            item = dynamodb.get_item(
                                TableName=table_name, Key={"pk": {"S": task_id}}, ConsistentRead=True
                            )["Item"]
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
                                    "invocations": [
                                        {"function": name, "ms": round(seconds * 1000, 1)}
                                        for name, seconds in invocations
                                    ],
                                    "task_item_bytes": item_bytes(item),
                                    "supernode_tasks": len(supernode.tasks()),
                                }
                            )
                            if status != "SUCCESS":
                                raise RuntimeError(f"task {task_id} of {layers} layers ended {status}")
    finally:
        if session is not None:
            session.unregister("before-call", counter.on_call)
            session.unregister("before-send", counter.on_send)
            announced.unregister(session)
    return results


# -- what a preheat costs -------------------------------------------------------------------------

# The anchor: the smallest Dragonfly 2 manager deployment a team would run instead, a month (730 h)
# at on-demand list prices: the manager on an EC2 t4g.medium (2 vCPU, 4 GiB, as Dragonfly's Helm
# chart sizes it; $0.0336/h), MySQL on RDS db.t4g.micro single-AZ ($0.016/h) with 20 GB gp3
# ($0.115/GB-month), Redis on ElastiCache cache.t4g.micro ($0.016/h).
ANCHOR_MONTHLY_USD = round(730 * 0.0336 + 730 * 0.016 + 20 * 0.115 + 730 * 0.016, 2)
ANCHOR_PARTS = "manager EC2 t4g.medium, RDS MySQL db.t4g.micro + 20 GB gp3, ElastiCache Redis cache.t4g.micro"
# Per preheat, besides what is measured: the caller's POST and one status read (or none, with the
# completion event), each through the API key authorizer (no authorizer cache: see the template).
API_REQUESTS_PER_PREHEAT = 2


def item_bytes(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of an item: names plus values (numbers counted as their digits)."""

    def size(value: Mapping[str, Any]) -> int:
        (kind, inner), *_ = value.items()
        if kind == "M":
            return 3 + sum(len(k) + size(v) for k, v in inner.items())
        if kind == "L":
            return 3 + sum(size(v) for v in inner)
        if kind in {"BOOL", "NULL"}:
            return 1
        return len(inner if isinstance(inner, str) else str(inner))

    return sum(len(name) + size(value) for name, value in item.items())


def cost_per_1000(record: Mapping[str, Any], memory_mb: Mapping[str, int]) -> dict[str, float]:
    """Dollars per 1000 preheats like ``record``, by service."""
    calls = record["calls"]
    wru_update = max(1, -(-record["task_item_bytes"] // 1024))
    # A transactional write costs two units per KB of each item (the task and its claim).
    writes = 2 * 2 * calls.get("dynamodb:TransactWriteItems", 0) + wru_update * calls.get(
        "dynamodb:UpdateItem", 0
    )
    reads = max(1, -(-record["task_item_bytes"] // 4096)) * calls.get("dynamodb:GetItem", 0)
    messages = calls.get("sqs:SendMessage", 0)
    gb_seconds = sum(
        memory_mb.get(call["function"], 128) / 1024 * max(call["ms"], 1.0) / 1000
        for call in record["invocations"]
    )
    # The API's own functions (POST, and the status read and authorizer the run did not make).
    invocations = len(record["invocations"]) + 2 * API_REQUESTS_PER_PREHEAT - 1
    usd = {
        "lambda": gb_seconds * PRICES_USD["lambda_gb_second"] + invocations * PRICES_USD["lambda_request"],
        "dynamodb": writes * PRICES_USD["dynamodb_write_unit"] + reads * PRICES_USD["dynamodb_read_unit"],
        "sqs": messages * SQS_REQUESTS_PER_MESSAGE * PRICES_USD["sqs_request"],
        "api_gateway": API_REQUESTS_PER_PREHEAT * PRICES_USD["api_request"],
        "eventbridge": calls.get("events:PutEvents", 0) * PRICES_USD["eventbridge_event"],
        "xray": (API_REQUESTS_PER_PREHEAT + messages) * PRICES_USD["xray_trace"],
    }
    return {service: round(value * 1000, 5) for service, value in usd.items()}


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
    memory_mb = {
        logical_id: spec.memory_size for logical_id, spec in Template.load(TEMPLATE).functions.items()
    }
    costs: dict[str, Any] = {}
    for layers in layer_counts:
        most = max(results[layers], key=lambda record: sum(call["ms"] for call in record["invocations"]))
        by_service = cost_per_1000(most, memory_mb)
        total = round(sum(by_service.values()), 4)
        costs[f"layers_{layers}"] = {"usd_per_1000": total, "by_service": by_service}
        figures[f"cost_{layers}"] = figure(
            total,
            round(ANCHOR_MONTHLY_USD / 30, 2),
            "at most",
            "USD",
            label=f"$ per 1000 preheats, {layers} layer{'s' if layers != 1 else ''}",
            detail=", ".join(f"{service} {value:.4f}" for service, value in by_service.items())
            + f"; target: a day of the smallest Dragonfly 2 manager (${ANCHOR_MONTHLY_USD:.2f} a month: "
            f"{ANCHOR_PARTS})",
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
        "cost": {
            "per_1000_preheats": costs,
            "prices_usd": PRICES_USD,
            "anchor_monthly_usd": ANCHOR_MONTHLY_USD,
            "anchor": ANCHOR_PARTS,
            "assumed": f"{API_REQUESTS_PER_PREHEAT} API requests per preheat (POST, one status read), each "
            "with an authorizer invocation (counted as invocations; their few milliseconds are not "
            "measured here); SQS receive and delete per message; Lambda durations as measured here, at "
            "the template's MemorySize",
        },
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
