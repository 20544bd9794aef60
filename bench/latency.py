"""End-to-end latency against its floor: from POST to the first status answer saying SUCCESS.

    .venv/bin/python -m bench.latency [--layers 1,10,100] [--index-layers 10] [--delay-ms 50]
                                      [--finish-delay 0] [--runs 7] [--set NAME=VALUE ...]

What it runs: the local stack (the real handlers behind the API Gateway stand-in, moto in server
mode, the SQS poller) against

- a real CNCF Distribution registry (anonymous, blobs on its filesystem) behind a reverse proxy that
  holds every answer back ``--delay-ms`` (r), holding one image per case: 1, 10 and 100 layers, and
  a two-platform OCI index of ``--index-layers`` layers per platform. Each run preheats a tag of its
  own (the same manifest under a new tag), so that no request is deduplicated against an earlier task;
- the reference Dragonfly 1 supernode, its answers held back ``--supernode-delay-ms`` (default r:
  a supernode is a network hop away too), finishing each blob ``--finish-delay`` (d) after its
  download. It downloads from the registry itself, not through the proxy: the proxy's delay is the
  service's distance from the registry, and how long a supernode takes over a blob is d. Its task
  list is emptied before each run, so that every blob is downloaded again, and it may download
  every blob of a case at once (a real supernode's pace is not what is measured).

The proxy and the supernode run in helper processes of their own: sharing this process's GIL with
moto and the handlers, or each other's, a hundred layers' worth of their requests would make the
figure time the harness. The supernode's handler is given TCP_NODELAY, and the status is read over a fresh
connection each time: on a kept-alive connection the local stand-ins (``local.supernode``,
``local.apigateway``) hold every answer ~40 ms for the client's delayed ACK (Nagle), which the
real services do not.

The time of a run is from just before the POST to the first status answer saying SUCCESS, read
every ``--poll-ms``. Runs go round the cases in turn, after ``--warmup`` rounds that are not
counted (they pay the local functions' cold starts); then this process's heap (moto, botocore's
models: millions of objects) is frozen out of the garbage collector, whose full collections of it
would otherwise stall every thread for ~300 ms at random (Lambda's worker holds no moto). The
figure is each case's median.

The floor of a case is what no design can avoid, computed in the same run:

- the round trips that cannot overlap: the manifest, the platform manifests (an index only, in
  parallel), one parallel round of blob requests (with ``--set PREHEAT_LAYER_URLS=storage`` only:
  registry blob URLs, the default, need none), each r; one supernode create and one supernode
  status read, each the supernode's delay; plus d. The registry needs no token. The supernode's
  download of each blob runs while its create answer travels back, so with d = 0 a blob is done
  when the first status read arrives;
- the AWS calls that must happen in sequence, each at its median latency measured against the same
  moto in the same run (before and after the counted runs): TransactWriteItems (the task and its
  claim), SendMessage, the SQS delivery to a waiting long poll (the local poller stands in for
  Lambda's event source mapping; on the path, since the worker starts when its message arrives;
  measured from SendMessage's return), GetItem (the worker reads the task), UpdateItem (the
  verdict), GetItem (the status read). The worker's progress write is left out: a task whose blobs
  finish within its first look needs none.

What the floor leaves out, and the allowance must cover: the API Gateway and Lambda stand-ins, the
handlers' own work, the worker's CPU, and the status polling's granularity (half of ``--poll-ms``
on average).

Targets: each case's median at most 1.5x its floor; the 100-layer image at most 1.3x the 1-layer one.
``--set NAME=VALUE`` passes a variable to the functions (``PREHEAT_CHECK_INTERVAL=0.05``...), to try
a setting without editing anything. Results go to ``bench/results/latency.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import requests
import requests.adapters

from bench import LAYER, RESULTS
from bench.common import (
    DelayProxy,
    api_session,
    figure,
    figure_rows,
    median,
    preheat_and_wait,
    quiet_logs,
    stack_variables,
    table,
    write_result,
)
from local.aws import client as local_client
from local.oci_layout import OCI_INDEX, OCI_MANIFEST, make_oci_index_layout, make_oci_layout
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, missing_tools
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from preheat.adapters.registry import DEFAULT_MAX_WORKERS as REGISTRY_MAX_WORKERS

NAME = "latency"
PROJECT_ROOT = LAYER.parent.parent
REPOSITORY_PREFIX = "bench/latency"
TARGET_VS_FLOOR = 1.5
TARGET_100_VS_1 = 1.3
INDEX_PLATFORMS = ("linux/amd64", "linux/arm64")
MANIFEST_ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}"
# A reference supernode that may download every blob of the largest case at once.
MAX_SUPERNODE_DOWNLOADS = 256

# The handlers log at INFO on stdout, which would bury the table (the template's LogLevel is a
# parameter: WARNING is one of its values).
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}

QUICK_ARGS = ["--runs", "3", "--aws-samples", "10"]


# -- the supernode, a network hop away ----------------------------------------------------------


class DelayedSupernode(ReferenceSupernode):
    """The reference supernode with every create and status answer held back ``delay`` seconds
    (after the work is done: a download starts as soon as the create arrives)."""

    def __init__(
        self, cache_dir: Path, delay: float, rewrite: tuple[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(cache_dir, **kwargs)
        self.delay = delay
        # (proxy URL prefix, registry URL prefix): blobs are downloaded from the registry directly.
        self.rewrite = rewrite
        self.creates = self.reads = 0
        self.in_flight = self.peak_in_flight = 0
        self._counter_lock = threading.Lock()

    def start(self) -> Self:
        super().start()
        # The reference supernode's handler writes headers and body apart without TCP_NODELAY, so on
        # a kept-alive connection every answer waits ~40 ms for the client's delayed ACK (a flaw
        # of the local stand-in, not of the service): its server gets a handler that sets it.
        server = getattr(self, "_server", None)
        if server is not None and not getattr(server.RequestHandlerClass, "disable_nagle_algorithm", False):
            server.RequestHandlerClass = type(
                "NoDelayHandler", (server.RequestHandlerClass,), {"disable_nagle_algorithm": True}
            )
        return self

    def mark(self) -> tuple[int, int]:
        with self._counter_lock:
            self.peak_in_flight = self.in_flight
            return self.creates, self.reads

    def _held(self, answer: Callable[[], tuple[int, Any]], kind: str) -> tuple[int, Any]:
        with self._counter_lock:
            if kind == "create":
                self.creates += 1
            else:
                self.reads += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            result = answer()
            time.sleep(self.delay)
            return result
        finally:
            with self._counter_lock:
                self.in_flight -= 1

    def create(self, body: Any) -> tuple[int, dict[str, Any]]:
        return self._held(lambda: super(DelayedSupernode, self).create(body), "create")

    def _download(
        self, task_id: str, url: str, headers: dict[str, str], digest: str | None
    ) -> tuple[int, Path]:
        if self.rewrite is not None and url.startswith(self.rewrite[0]):
            url = self.rewrite[1] + url.removeprefix(self.rewrite[0])
        return super()._download(task_id, url, headers, digest)

    def get(self, task_id: str) -> tuple[int, dict[str, Any]]:
        return self._held(lambda: super(DelayedSupernode, self).get(task_id), "read")

    def forget_tasks(self) -> None:
        """Forget every task (the cache keeps the files): the next create downloads again."""
        for task_id in self.tasks():
            self.delete(task_id)


# -- the images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    layers: int  # per platform
    platforms: tuple[str, ...] = ()  # () is a single image; otherwise an index of these

    @property
    def repository(self) -> str:
        return f"{REPOSITORY_PREFIX}-{self.key.replace('_', '-')}"

    @property
    def blobs(self) -> int:
        return max(1, len(self.platforms)) * (self.layers + 1)

    @property
    def registry_round_trips(self) -> dict[str, int]:
        trips = {"token": 0, "manifest": 1}
        if self.platforms:
            trips["platform manifests"] = 1
        trips["blobs (one parallel round)"] = 1
        return trips


def cases_for(layer_counts: Sequence[int], index_layers: int) -> list[Case]:
    cases = [Case(f"layers_{n}", f"{n} layer{'s' if n != 1 else ''}", n) for n in dict.fromkeys(layer_counts)]
    if index_layers > 0:
        cases.append(
            Case(
                f"index_{len(INDEX_PLATFORMS)}x{index_layers}",
                f"index {len(INDEX_PLATFORMS)} x {index_layers} layers",
                index_layers,
                INDEX_PLATFORMS,
            )
        )
    return cases


def push_case(registry: RegistryServer, scratch: Path, case: Case, tags: Sequence[str]) -> None:
    """Generate the case's image (layers unlike any other case's), push it, and tag it ``tags``."""

    def layers(platform: str) -> list[bytes]:
        return [f"{case.key} {platform} layer {n}\n".encode() for n in range(case.layers)]

    path = scratch / case.key
    if case.platforms:
        layout: Any = make_oci_index_layout(path, {p: layers(p) for p in case.platforms})
    else:
        layout = make_oci_layout(path, layers("linux/amd64"))
    registry.push(layout, f"{case.repository}:{tags[0]}")
    with requests.Session() as session:
        source = session.get(
            f"{registry.url}/v2/{case.repository}/manifests/{tags[0]}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=30,
        )
        source.raise_for_status()
        for tag in tags[1:]:
            session.put(
                f"{registry.url}/v2/{case.repository}/manifests/{tag}",
                data=source.content,
                headers={"Content-Type": source.headers["Content-Type"]},
                timeout=30,
            ).raise_for_status()


def registry_burst_seconds(registry_url: str, case: Case, tag: str, rounds: int = 3) -> float:
    """How long the registry itself (no proxy, no delay) takes to answer every blob probe of the
    case at once, as the worker sends them (64 at a time, one byte each): the registry's own share
    of the "one parallel round of blob requests", which the floor counts as r alone. Median of
    ``rounds``."""
    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=REGISTRY_MAX_WORKERS))

        def manifest(reference: str) -> dict[str, Any]:
            answer = session.get(
                f"{registry_url}/v2/{case.repository}/manifests/{reference}",
                headers={"Accept": MANIFEST_ACCEPT},
                timeout=30,
            )
            answer.raise_for_status()
            document: dict[str, Any] = answer.json()
            return document

        root = manifest(tag)
        images = [manifest(entry["digest"]) for entry in root["manifests"]] if "manifests" in root else [root]
        digests = sorted(
            {image["config"]["digest"] for image in images}
            | {layer["digest"] for image in images for layer in image["layers"]}
        )

        def probe(digest: str) -> None:
            session.get(
                f"{registry_url}/v2/{case.repository}/blobs/{digest}",
                headers={"Range": "bytes=0-0"},
                timeout=30,
            ).close()

        seconds = []
        with ThreadPoolExecutor(min(REGISTRY_MAX_WORKERS, len(digests))) as pool:
            for _ in range(rounds + 1):  # the first opens the connections
                started = time.perf_counter()
                list(pool.map(probe, digests))
                seconds.append(time.perf_counter() - started)
        return median(seconds[1:])


# -- the AWS calls on the path ------------------------------------------------------------------

SEQUENTIAL_AWS = (
    ("TransactWriteItems", "dynamodb:TransactWriteItems"),
    ("SendMessage", "sqs:SendMessage"),
    ("SQS delivery", "sqs:delivery"),
    ("GetItem (worker)", "dynamodb:GetItem"),
    ("UpdateItem (verdict)", "dynamodb:UpdateItem"),
    ("GetItem (status read)", "dynamodb:GetItem"),
)


@dataclass
class AwsTimings:
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def medians(self) -> dict[str, float]:
        return {name: median(values) for name, values in self.samples.items()}


def time_aws_calls(stack: LocalStack, samples: int, timings: AwsTimings) -> None:
    """Median latencies of the calls on the task's path, against the stack's own moto and table
    (scratch items and a scratch queue: nothing the service reads)."""
    dynamodb = local_client("dynamodb", stack.moto_url)
    sqs = local_client("sqs", stack.moto_url)
    table_name = stack.table_name("TasksTable")
    queue_url = sqs.create_queue(QueueName=f"bench-latency-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arrivals: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def receive() -> None:
        receiver = local_client("sqs", stack.moto_url)
        while not stop.is_set():
            messages = receiver.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
            ).get("Messages", [])
            for message in messages:
                arrivals.put(time.perf_counter())
                receiver.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    receiver = threading.Thread(target=receive, name="bench-sqs-receiver", daemon=True)
    receiver.start()
    body = '{"taskId": "00000000-0000-4000-8000-000000000000", "step": "start", "headers": {}}'
    blobs = bytes(range(256)) * 8  # about what a small task's compressed progress weighs
    try:
        for _ in range(samples):
            key = f"bench#{uuid.uuid4()}"
            item = {"pk": {"S": key}, "status": {"S": "RUNNING"}, "checkSeq": {"N": "0"}}
            claim = {"pk": {"S": f"bench-claim#{uuid.uuid4()}"}, "taskId": {"S": key}}
            put = {"TableName": table_name, "ConditionExpression": "attribute_not_exists(pk)"}
            started = time.perf_counter()
            dynamodb.transact_write_items(
                TransactItems=[{"Put": {**put, "Item": item}}, {"Put": {**put, "Item": claim}}]
            )
            timings.add("dynamodb:TransactWriteItems", time.perf_counter() - started)

            time.sleep(0.02)  # let the receiver's long poll be waiting
            started = time.perf_counter()
            sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=body,
                MessageAttributes={"taskId": {"DataType": "String", "StringValue": key}},
            )
            sent = time.perf_counter()
            timings.add("sqs:SendMessage", sent - started)
            arrived = arrivals.get(timeout=10)
            timings.add("sqs:delivery", max(0.0, arrived - sent))

            started = time.perf_counter()
            dynamodb.get_item(TableName=table_name, Key={"pk": {"S": key}}, ConsistentRead=True)
            timings.add("dynamodb:GetItem", time.perf_counter() - started)

            started = time.perf_counter()
            dynamodb.update_item(
                TableName=table_name,
                Key={"pk": {"S": key}},
                UpdateExpression="SET #status = :status, checkSeq = :seq, blobs = :blobs",
                ConditionExpression="checkSeq = :expected AND #status = :running",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":status": {"S": "SUCCESS"},
                    ":seq": {"N": "1"},
                    ":expected": {"N": "0"},
                    ":running": {"S": "RUNNING"},
                    ":blobs": {"B": blobs},
                },
            )
            timings.add("dynamodb:UpdateItem", time.perf_counter() - started)
    finally:
        stop.set()
        receiver.join(timeout=5)
        sqs.delete_queue(QueueUrl=queue_url)


# -- the runs -----------------------------------------------------------------------------------


@dataclass
class CaseRuns:
    seconds: list[float] = field(default_factory=list)
    registry_requests: list[int] = field(default_factory=list)
    registry_peak: list[int] = field(default_factory=list)
    supernode_creates: list[int] = field(default_factory=list)
    supernode_reads: list[int] = field(default_factory=list)
    supernode_peak: list[int] = field(default_factory=list)
    # CPU seconds a run cost the helper process (proxy and supernode) and the stack's process (moto,
    # the stand-ins, the handlers): near a run's wall time, a process was the bottleneck.
    helper_cpu: list[float] = field(default_factory=list)
    stack_cpu: list[float] = field(default_factory=list)
    # The registry's own time to answer all the case's blob probes at once (see registry_burst_seconds).
    registry_burst: float = 0.0


class _HelperProcess:
    """One stand-in in a process of its own, spoken to in lines of JSON on its stdin and stdout."""

    def __init__(self, role: str, config: Mapping[str, Any]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.latency", "--helpers", json.dumps({**config, "role": role})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
        )
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the helper process ended (exit code {self._process.wait(timeout=10)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.ask("quit")
                self._process.wait(timeout=15)
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(timeout=5)


class Helpers:
    """The delaying proxy and the supernode, each in a process of its own (``--helpers``).

    Everything else (moto, the API stand-in, the handlers) shares this process and its GIL; were
    the stand-ins for the network here too, a hundred layers' worth of their requests would queue
    behind one another for the CPU and the figure would time the harness, not the service. Apart
    from each other too: a burst of a hundred registry requests must not hold up the supernode's
    answers. The commands: ``reset`` (forget the supernode's tasks, start counting afresh),
    ``stats`` (the counts since, and the CPU the two processes spent), ``quit``."""

    def __init__(
        self, registry_url: str, delay: float, supernode_delay: float, finish_delay: float, cache_dir: Path
    ) -> None:
        config = {
            "registry_url": registry_url,
            "delay": delay,
            "supernode_delay": supernode_delay,
            "finish_delay": finish_delay,
            "cache_dir": str(cache_dir),
        }
        self._proxy = _HelperProcess("proxy", config)
        self.registry_host: str = self._proxy.ready["registry_host"]
        try:
            self._supernode = _HelperProcess("supernode", {**config, "proxy_host": self.registry_host})
        except BaseException:
            self._proxy.close()
            raise
        self.supernode_url: str = self._supernode.ready["supernode_url"]

    def ask(self, command: str) -> dict[str, Any]:
        proxy, supernode = self._proxy.ask(command), self._supernode.ask(command)
        answer = {**proxy, **supernode}
        if "cpu_seconds" in proxy:
            answer["cpu_seconds"] = proxy["cpu_seconds"] + supernode["cpu_seconds"]
        return answer

    def close(self) -> None:
        self._supernode.close()
        self._proxy.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_helpers(config_json: str) -> int:
    """A helper process (see :class:`Helpers`): the proxy, or the supernode."""
    quiet_logs()
    config = json.loads(config_json)

    def reply(answer: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    if config["role"] == "proxy":
        with DelayProxy(config["registry_url"], config["delay"]) as proxy:
            reply({"registry_host": proxy.host})
            mark, cpu_mark = proxy.mark(), time.process_time()
            for line in sys.stdin:
                command = line.strip()
                if command == "reset":
                    mark, cpu_mark = proxy.mark(), time.process_time()
                    reply({})
                elif command == "stats":
                    reply(
                        {
                            "registry_requests": len(proxy.since(mark)),
                            "registry_peak": proxy.peak_in_flight,
                            "cpu_seconds": time.process_time() - cpu_mark,
                        }
                    )
                else:
                    reply({})
                    break
        return 0
    with DelayedSupernode(
        Path(config["cache_dir"]),
        config["supernode_delay"],
        rewrite=(f"http://{config['proxy_host']}", config["registry_url"].rstrip("/")),
        finish_delay=config["finish_delay"],
        max_concurrent_downloads=MAX_SUPERNODE_DOWNLOADS,
    ).start() as supernode:
        reply({"supernode_url": supernode.url})
        counts, cpu_mark = supernode.mark(), time.process_time()
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                supernode.forget_tasks()
                counts, cpu_mark = supernode.mark(), time.process_time()
                reply({})
            elif command == "stats":
                reply(
                    {
                        "supernode_creates": supernode.creates - counts[0],
                        "supernode_reads": supernode.reads - counts[1],
                        "supernode_peak": supernode.peak_in_flight,
                        "cpu_seconds": time.process_time() - cpu_mark,
                    }
                )
            else:
                reply({})
                break
    return 0


def measure(args: argparse.Namespace, cases: Sequence[Case]) -> tuple[dict[str, CaseRuns], AwsTimings]:
    missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed (apt-get install docker-registry skopeo)")
    delay = args.delay_ms / 1000
    tags = [f"run{n}" for n in range(args.warmup + args.runs)]
    runs = {case.key: CaseRuns() for case in cases}
    timings = AwsTimings()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as scratch_dir:
            scratch = Path(scratch_dir)
            with RegistryServer(scratch / "registry") as registry:
                for case in cases:
                    push_case(registry, scratch / "layouts", case, tags)
                with (
                    Helpers(
                        registry.url, delay, supernode_delay_of(args), args.finish_delay, scratch / "cache"
                    ) as helpers,
                    LocalStack(
                        supernodes=[helpers.supernode_url], cache_dir=scratch / "unused", extra_env=args.env
                    ) as stack,
                    api_session() as session,
                ):
                    for number, tag in enumerate(tags):
                        counted = number >= args.warmup
                        if counted and number == args.warmup:
                            time_aws_calls(stack, args.aws_samples, timings)
                            # moto, botocore's models and the stack are a heap of millions of objects: a
                            # full collection of it stalls every thread for ~300 ms. Frozen, it is left
                            # out of collections (Lambda's worker holds no moto).
                            gc.collect()
                            gc.freeze()
                        for case in cases:
                            helpers.ask("reset")
                            stack_cpu = time.process_time()
                            _, seconds = preheat_and_wait(
                                session,
                                stack.api_url,
                                {"type": "image", "url": f"{helpers.registry_host}/{case.repository}:{tag}"},
                                poll_interval=args.poll_ms / 1000,
                            )
                            if not counted:
                                continue
                            stack_cpu = time.process_time() - stack_cpu
                            stats = helpers.ask("stats")
                            record = runs[case.key]
                            record.helper_cpu.append(stats["cpu_seconds"])
                            record.stack_cpu.append(stack_cpu)
                            record.seconds.append(seconds)
                            record.registry_requests.append(stats["registry_requests"])
                            record.registry_peak.append(stats["registry_peak"])
                            record.supernode_creates.append(stats["supernode_creates"])
                            record.supernode_reads.append(stats["supernode_reads"])
                            record.supernode_peak.append(stats["supernode_peak"])
                    # Measured once more after the runs: the floor reflects the whole run's conditions.
                    time_aws_calls(stack, args.aws_samples, timings)
                for case in cases:
                    runs[case.key].registry_burst = registry_burst_seconds(registry.url, case, tags[0])
    finally:
        gc.unfreeze()
    return runs, timings


def supernode_delay_of(args: argparse.Namespace) -> float:
    milliseconds = args.delay_ms if args.supernode_delay_ms is None else args.supernode_delay_ms
    return float(milliseconds) / 1000


# -- the report ---------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, cases: Sequence[Case], runs: Mapping[str, CaseRuns], timings: AwsTimings
) -> dict[str, Any]:
    delay = args.delay_ms / 1000
    supernode_delay = supernode_delay_of(args)
    aws = timings.medians()
    aws_path = {label: aws[key] for label, key in SEQUENTIAL_AWS}
    aws_seconds = sum(aws_path.values())
    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    medians: dict[str, float] = {}
    for case in cases:
        record = runs[case.key]
        registry_trips = dict(case.registry_round_trips)
        if dict(args.env).get("PREHEAT_LAYER_URLS", "registry").strip().lower() != "storage":
            # Registry blob URLs (the default) are handed over as the manifest names them: no round
            # of blob requests.
            del registry_trips["blobs (one parallel round)"]
        supernode_trips = {"create": 1, "status read": 1}
        network = sum(registry_trips.values()) * delay + sum(supernode_trips.values()) * supernode_delay
        floor = network + args.finish_delay + aws_seconds
        middle = medians[case.key] = median(record.seconds)
        ratio = middle / floor
        results[case.key] = {
            "label": case.label,
            "layers_per_platform": case.layers,
            "platforms": list(case.platforms) or ["linux/amd64"],
            "blobs": case.blobs,
            "runs_seconds": [round(s, 4) for s in record.seconds],
            "median_seconds": round(middle, 4),
            "min_seconds": round(min(record.seconds), 4),
            "max_seconds": round(max(record.seconds), 4),
            "floor_seconds": round(floor, 4),
            "floor_parts": {
                "registry_round_trips": registry_trips,
                "supernode_round_trips": supernode_trips,
                "network_seconds": round(network, 4),
                "finish_delay_seconds": args.finish_delay,
                "aws_seconds": round(aws_seconds, 4),
            },
            "ratio": round(ratio, 3),
            "registry_requests_per_run": max(record.registry_requests),
            "registry_peak_parallel": max(record.registry_peak),
            "supernode_creates_per_run": max(record.supernode_creates),
            "supernode_status_reads_per_run": max(record.supernode_reads),
            "supernode_peak_parallel": max(record.supernode_peak),
            "helper_cpu_seconds_median": round(median(record.helper_cpu), 4),
            "stack_cpu_seconds_median": round(median(record.stack_cpu), 4),
            "registry_burst_seconds": round(record.registry_burst, 4),
        }
        figures[f"{case.key}_vs_floor"] = figure(
            round(ratio, 3),
            TARGET_VS_FLOOR,
            "at most",
            "x",
            label=f"latency {case.label} / floor",
            detail=(
                f"median {middle:.3f} s, floor {floor:.3f} s; the registry alone answers its "
                f"{case.blobs} blob probes at once in {record.registry_burst:.3f} s"
            ),
        )
    if "layers_1" in medians and "layers_100" in medians:
        ratio = medians["layers_100"] / medians["layers_1"]
        figures["layers_100_vs_layers_1"] = figure(
            round(ratio, 3),
            TARGET_100_VS_1,
            "at most",
            "x",
            label="latency 100 layers / 1 layer",
            detail=f"{medians['layers_100']:.3f} s vs {medians['layers_1']:.3f} s",
        )
    return {
        "benchmark": NAME,
        "command": "python -m bench.latency " + " ".join(args.argv),
        "setup": {
            "registry_delay_ms": args.delay_ms,
            "supernode_delay_ms": round(supernode_delay * 1000, 3),
            "finish_delay_seconds": args.finish_delay,
            "runs": args.runs,
            "warmup_rounds": args.warmup,
            "status_poll_ms": args.poll_ms,
            "aws_samples": len(timings.samples.get("dynamodb:GetItem", [])),
            "environment": dict(args.env),
            "registry": (
                "CNCF Distribution (docker-registry), anonymous, filesystem storage, behind a delaying proxy"
            ),
            "supernode": (
                f"reference Dragonfly 1 supernode, up to {MAX_SUPERNODE_DOWNLOADS} downloads at once"
            ),
        },
        "aws_median_ms": {name: round(seconds * 1000, 3) for name, seconds in sorted(aws.items())},
        "aws_on_path_ms": {name: round(seconds * 1000, 3) for name, seconds in aws_path.items()},
        "cases": results,
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        f"latency: POST to SUCCESS, r = {setup['registry_delay_ms']:g} ms (registry), "
        f"{setup['supernode_delay_ms']:g} ms (supernode), d = {setup['finish_delay_seconds']:g} s, "
        f"median of {setup['runs']} runs",
        f"{'case':<26} {'blobs':>5} {'median':>9} {'floor':>9} {'ratio':>7}  "
        f"{'registry req (peak)':>19}  {'supernode req (peak)':>20}",
    ]
    for case in result["cases"].values():
        supernode_requests = case["supernode_creates_per_run"] + case["supernode_status_reads_per_run"]
        lines.append(
            f"{case['label']:<26} {case['blobs']:>5} {case['median_seconds']:>8.3f}s "
            f"{case['floor_seconds']:>8.3f}s {case['ratio']:>6.2f}x  "
            f"{case['registry_requests_per_run']:>12} ({case['registry_peak_parallel']:>3})  "
            f"{supernode_requests:>13} ({case['supernode_peak_parallel']:>3})"
        )
    on_path = ", ".join(f"{name} {ms:.1f}" for name, ms in result["aws_on_path_ms"].items())
    lines.append(f"AWS on the path (median ms): {on_path}")
    lines.append("")
    lines.append(table(figure_rows(result["figures"])))
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("layer counts must be at least 1")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--helpers":
        return serve_helpers(argv[1])
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layers", type=_counts, default=[1, 10, 100], help="images to time (default 1,10,100)"
    )
    parser.add_argument(
        "--index-layers", type=int, default=10, help="layers per platform of the index case (0: none)"
    )
    parser.add_argument("--delay-ms", type=float, default=50.0, help="r, on every registry answer")
    parser.add_argument(
        "--supernode-delay-ms", type=float, default=None, help="on every supernode answer (default r)"
    )
    parser.add_argument("--finish-delay", type=float, default=0.0, help="d: the supernode's, seconds")
    parser.add_argument("--runs", type=int, default=7, help="counted runs per case (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default 1)")
    parser.add_argument("--poll-ms", type=float, default=25.0, help="between status reads (default 25)")
    parser.add_argument("--aws-samples", type=int, default=20, help="timings of each AWS call, twice")
    stack_variables(parser, "PREHEAT_CHECK_INTERVAL=0.05")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.aws_samples < 1 or args.delay_ms < 0 or args.poll_ms <= 0:
        parser.error("--runs and --aws-samples must be at least 1, --warmup and --delay-ms at least 0")
    args.env = {**QUIET_FUNCTIONS, **dict(args.env)}
    args.argv = list(argv)
    quiet_logs()
    cases = cases_for(args.layers, args.index_layers)
    runs, timings = measure(args, cases)
    result = report(args, cases, runs, timings)
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
