"""Throughput: preheat requests per second through the local API, against the floor of its AWS calls.

    .venv/bin/python -m bench.throughput [--requests 1000] [--clients 16] [--rounds 3]

What it runs: the local stack (the real handlers behind the API Gateway stand-in, moto in server
mode, the SQS poller feeding the real worker) with the reference Dragonfly 1 supernode, and a small
file server on 127.0.0.1. ``--clients`` threads, each with a ``requests.Session`` of its own, share
``--requests`` POST /api/preheat between them, each a ``file`` preheat of a URL of its own on the
file server (identical requests would share one task). The figure is the requests answered per
second, from the first request sent to the last answer.

Nothing may be lost: every answer must be ``code 200`` with a task id of its own, and every task
must reach SUCCESS (a FAIL is counted apart, and is the service's error: every file is served), read
in bulk straight from the table (BatchGetItem, every 0.25 s) until all of its round have or
``--timeout`` passes after the round's last answer. Each task's URL is read back too: a request that
recorded another request's body would show there.

The floor is what the API cannot do without, measured in the same run against the same moto server
at the same concurrency: as many pairs of ``TransactWriteItems`` (an item shaped like a new task
and its claim, as the service writes them) and ``SendMessage`` (a body shaped like the worker's
first message), sent by ``--clients`` threads each with boto3 clients of its own, to twins of the
task table and of the worker's queue created from the same template definitions under another name
prefix. No poller reads the twin queue: its messages are not tasks, and the benchmark empties it
after each floor round.

Floor and service rounds alternate, floor first, after a warm-up of each that is not counted (it
loads the execution environments the clients keep busy: cold starts are ``cold_start``'s business);
each rate is the median of its rounds, and the ratio the median of each round's ratio to the floor
round just before it (their spread is in the detail). The worker's SQS poller runs in a process of
its own (``bench._worker_process``), as Lambda runs the worker apart from the API, and it is paused
(its pollers stopped once their batches in hand are done) while a round is timed: on AWS its
DynamoDB and SQS calls land on other machines than the API's, while here they would take turns with
the round's own in the one moto server and the two cores. It drains the round's tasks between
rounds; the next round starts once each of them is terminal. So each kind of round runs alone, on
tables of about the same size (moto's costs grow with a table) and with its queue filling from empty
(moto's SendMessage counts every message of its queue) — before, a floor round that overlapped the
worker's backlog of the round before ran at half the pace of the first one, and the ratio told more
about that than about the API. The heap built by then (moto, botocore's models, the stack) is frozen
out of the garbage collector before the first counted round, as ``latency`` does: its full
collections would stall every thread at random, in both kinds of round alike.

Beside the figures the JSON keeps sequential timings of single moto calls taken after the rounds
(``moto_call_ms``): PutItem, and TransactWriteItems of a task and its claim (the write the service
makes, in one transaction) against an empty twin table and against the service's table as the
rounds left it. moto deep-copies every table a transaction names before applying it, so its cost
grows with the table, which no DynamoDB's does: where the time goes when the ratio falls short.
(moto also keeps every copy, through the instance tracking of its models; the benchmark lets go of
them at the end, or the interpreter's exit would spend half a minute collecting them.)

Target: the API's requests per second at least 0.7 of the floor's; every task SUCCESS, none FAIL or lost.
Results go to ``bench/results/throughput.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import boto3
import requests
from botocore.config import Config

from bench import LAYER, RESULTS
from bench.common import figure, figure_rows, median, quiet_logs, stack_variables, table, write_result
from local.aws import LOCAL_CREDENTIALS, LOCAL_REGION, provision
from local.aws import client as local_client
from local.background import BackgroundServer
from local.stack import STATE_FILE_NAME, SUPERNODES_PARAMETER, LocalStack
from local.supernode import ReferenceSupernode

NAME = "throughput"
TARGET_VS_FLOOR = 0.7
TERMINAL = frozenset({"SUCCESS", "FAIL"})
TABLE = "TasksTable"
QUEUE = "PreheatQueue"
FLOOR_PREFIX = "bench-floor"
EMPTY_PREFIX = "bench-empty"
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
BATCH_GET_LIMIT = 100  # DynamoDB's most keys per BatchGetItem
STATUS_POLL_SECONDS = 0.25
REFUSAL_CHARS = 120
DRAIN_BATCH = 10  # SQS's most messages per receive
PROBE_SAMPLES = 10
# Every blob of a round may download at once: the supernode's pace is not what is measured.
MAX_SUPERNODE_DOWNLOADS = 64

QUICK_ARGS = ["--requests", "100", "--clients", "4", "--rounds", "1"]
PROJECT_ROOT = LAYER.parent.parent
WORKER = "WorkerFunction"


# -- the file server ------------------------------------------------------------------------------


class _FileHandler(BaseHTTPRequestHandler):
    """``GET /files/<name>``: a few bytes of its own; the worker's one-byte probe gets one byte."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; Nagle would hold the body for the delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/files/"):
            self.send_error(404)
            return
        payload = f"throughput {self.path}\n".encode()
        if (self.headers.get("Range") or "").strip() == "bytes=0-0":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-0/{len(payload)}")
            payload = payload[:1]
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the worker and the supernode may open many connections at once


class FileServer(BackgroundServer):
    """Files to preheat, a URL of its own for every request, on 127.0.0.1 (which the local stack's
    network policy allows)."""

    def __init__(self) -> None:
        super().__init__(_FileServer(("127.0.0.1", 0), _FileHandler), "throughput-files")


# -- the rounds -----------------------------------------------------------------------------------


@dataclass
class Round:
    """``requests`` calls shared by ``clients`` threads: how long, and what each answered."""

    kind: str
    requests: int
    clients: int
    seconds: float = 0.0
    answers: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


Call = Callable[[int], Any]


def run_round(kind: str, count: int, calls: Sequence[Call]) -> Round:
    """``count`` calls, n = 0..count-1, taken in turn by one thread per caller of ``calls``.

    Each caller holds its thread's own session or clients, built before the round; the clock runs
    from the first call to the last answer. A call that raises is an answer of None, its error
    kept."""
    result = Round(kind, count, len(calls), answers=[None] * count)
    numbers = iter(range(count))
    lock = threading.Lock()
    start_line = threading.Barrier(len(calls) + 1)

    def take() -> int | None:
        with lock:
            return next(numbers, None)

    def client(call: Call) -> None:
        start_line.wait()
        while (n := take()) is not None:
            try:
                result.answers[n] = call(n)
            except Exception as exc:  # a failed request is a result to count, not a crash
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=client, args=(call,), name=f"{kind}-client-{i}")
        for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def file_url(files_url: str, tag: str, n: int) -> str:
    return f"{files_url}/files/{tag}-{n}"


def preheat_calls(clients: int, api_url: str, files_url: str, tag: str) -> list[Call]:
    """One POST /api/preheat caller per client, each over a ``requests.Session`` of its own."""

    def caller(session: requests.Session) -> Call:
        def post(n: int) -> Any:
            body = {"type": "file", "url": file_url(files_url, tag, n)}
            return session.post(f"{api_url}/api/preheat", json=body, timeout=60).json()

        return post

    return [caller(requests.Session()) for _ in range(clients)]


@dataclass
class FloorClients:
    """A DynamoDB and an SQS client for each floor thread, kept for every round."""

    moto_url: str
    clients: int
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Built here, one after another, from one session: its loader reads botocore's service
        # models once (a session of their own each would read them 2 x clients times, seconds of
        # the run), and a session must not build clients on several threads at once. The settings
        # are local.aws.client's, the ones the stack's own clients use.
        session = boto3.session.Session(region_name=LOCAL_REGION, **LOCAL_CREDENTIALS)
        config = Config(retries={"max_attempts": 2, "mode": "standard"})
        self.pairs = [
            (
                session.client("dynamodb", endpoint_url=self.moto_url, config=config),
                session.client("sqs", endpoint_url=self.moto_url, config=config),
            )
            for _ in range(self.clients)
        ]

    def calls(self, table_name: str, queue_url: str, tag: str) -> list[Call]:
        return [floor_call(dynamodb, sqs, table_name, queue_url, tag) for dynamodb, sqs in self.pairs]


def floor_call(dynamodb: Any, sqs: Any, table_name: str, queue_url: str, tag: str) -> Call:
    """The calls the API must make per request: one TransactWriteItems of a task-shaped item and its
    claim, then a SendMessage shaped like the worker's first message."""

    def pair(n: int) -> Any:
        task_id = str(uuid.uuid4())
        transact_create(dynamodb, table_name, task_id, f"http://127.0.0.1/files/{tag}-{n}")
        sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps({"v": 1, "taskId": task_id, "step": "start", "seq": 0}),
            MessageAttributes={
                "taskId": {"DataType": "String", "StringValue": task_id},
                "step": {"DataType": "String", "StringValue": "start"},
            },
        )
        return task_id

    return pair


def task_item(task_id: str, url: str) -> dict[str, Any]:
    """An item with the attributes the service writes for a new RUNNING task."""
    now = datetime.now(UTC)
    deadline = int((now + timedelta(seconds=1800)).timestamp())
    return {
        "pk": {"S": task_id},
        "type": {"S": "file"},
        "url": {"S": url},
        "status": {"S": "RUNNING"},
        "createdAt": {"S": now.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        "deadline": {"N": str(deadline)},
        "dispatched": {"BOOL": False},
        "checkSeq": {"N": "0"},
        "expiresAt": {"N": str(deadline + 7 * 86400)},
    }


def empty_queue(moto_url: str, queue_url: str) -> None:
    """Receive and delete the messages of ``queue_url`` until none is left, 10 at a time, as the
    worker's pollers would (the twin queue's messages are not tasks: nothing runs them)."""
    sqs = local_client("sqs", moto_url)
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=DRAIN_BATCH).get(
            "Messages", []
        )
        if not messages:
            return
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )


@dataclass
class WorkerProcess:
    child: subprocess.Popen[bytes]
    acknowledgements: IO[str]  # the child acknowledges each command here (its stdout has metrics)

    def tell(self, command: str) -> None:
        """Send ``command`` ("pause", "resume") and wait until the child has carried it out."""
        assert self.child.stdin is not None
        self.child.stdin.write(f"{command}\n".encode())
        self.child.stdin.flush()
        answer = self.acknowledgements.readline().strip()
        if answer != command:
            raise RuntimeError(f"the worker process did not {command} (it answered {answer!r})")


@contextlib.contextmanager
def worker_process(state_file: Path, pollers: int, errors_file: Path) -> Iterator[WorkerProcess]:
    """The worker's poller in a process of its own (``bench._worker_process``), as Lambda runs the
    worker apart from the API: it does not compete for this process's GIL."""
    ack_read, ack_write = os.pipe()
    with errors_file.open("w", encoding="utf-8") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench._worker_process", str(state_file), str(pollers), str(ack_write)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            cwd=PROJECT_ROOT,
            pass_fds=(ack_write,),
        )
    os.close(ack_write)
    try:
        with open(ack_read, encoding="utf-8") as acknowledgements:
            deadline = time.monotonic() + 60
            while "ready" not in errors_file.read_text(encoding="utf-8"):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker process did not start: {errors_file.read_text()[-2000:]}")
                time.sleep(0.1)
            yield WorkerProcess(child, acknowledgements)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.contextmanager
def paused(worker: WorkerProcess) -> Iterator[None]:
    """The worker's pollers stopped while the block runs (``bench._worker_process``: the batches in
    hand finish first, so no request of it is left half-sent to moto): on AWS the worker's calls
    land on other machines than the API's, and on this one they would share moto and two cores with
    the round being timed."""
    worker.tell("pause")
    try:
        yield
    finally:
        worker.tell("resume")


# -- reading the tasks back -----------------------------------------------------------------------


def read_tasks(dynamodb: Any, table_name: str, task_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each task's status and URL as the table holds them (a task without an item is absent)."""
    found: dict[str, dict[str, str]] = {}
    for start in range(0, len(task_ids), BATCH_GET_LIMIT):
        keys: list[dict[str, Any]] = [{"pk": {"S": t}} for t in task_ids[start : start + BATCH_GET_LIMIT]]
        while keys:
            answer = dynamodb.batch_get_item(
                RequestItems={
                    table_name: {
                        "Keys": keys,
                        "ProjectionExpression": "pk, #status, #url",
                        "ExpressionAttributeNames": {"#status": "status", "#url": "url"},
                        "ConsistentRead": True,
                    }
                }
            )
            for item in answer["Responses"].get(table_name, []):
                found[item["pk"]["S"]] = {"status": item["status"]["S"], "url": item["url"]["S"]}
            keys = answer.get("UnprocessedKeys", {}).get(table_name, {}).get("Keys", [])
    return found


def wait_until_terminal(
    dynamodb: Any, table_name: str, task_ids: Sequence[str], timeout: float
) -> tuple[dict[str, dict[str, str]], float]:
    """The tasks once every one is terminal (or at ``timeout``), and the seconds waited."""
    started = time.monotonic()
    while True:
        found = read_tasks(dynamodb, table_name, task_ids)
        waited = time.monotonic() - started
        if all(found.get(t, {}).get("status") in TERMINAL for t in task_ids) or waited >= timeout:
            return found, waited
        time.sleep(STATUS_POLL_SECONDS)


@dataclass
class Accepted:
    """What the answers of the service's rounds said: task id per request, and the refusals."""

    task_ids: dict[str, str] = field(default_factory=dict)  # task id -> the URL its request posted
    duplicates: int = 0
    refusals: Counter[str] = field(default_factory=Counter)

    def add(self, answers: Sequence[Any], urls: Sequence[str], errors: Sequence[str]) -> None:
        self.refusals.update(" ".join(error.split())[:REFUSAL_CHARS] for error in errors)
        for answer, url in zip(answers, urls, strict=True):
            data = answer.get("data") if isinstance(answer, dict) else None
            task_id = data.get("taskId") if isinstance(data, dict) else None
            if isinstance(answer, dict) and answer.get("code") == 200 and isinstance(task_id, str):
                if task_id in self.task_ids:
                    self.duplicates += 1
                self.task_ids[task_id] = url
            elif answer is not None:
                # On one line and short: a message may carry a whole HTML error page.
                text = " ".join(f"code {answer.get('code')}: {answer.get('msg')}".split())
                self.refusals[text[:REFUSAL_CHARS]] += 1

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


# -- moto's own cost --------------------------------------------------------------------------------


def call_ms(call: Callable[[], Any], samples: int = PROBE_SAMPLES) -> float:
    """The median milliseconds of ``call``, made ``samples`` times one after another."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(median(times) * 1000, 2)


def transact_create(
    dynamodb: Any, table_name: str, task_id: str | None = None, url: str = "http://127.0.0.1/files/probe"
) -> None:
    """The service's write for a new task: the task and its claim, in one transaction."""
    task_id = task_id or str(uuid.uuid4())
    put = {"TableName": table_name, "ConditionExpression": "attribute_not_exists(pk)"}
    claim = {"pk": {"S": f"claim#{task_id}"}, "taskId": {"S": task_id}, "expiresAt": {"N": "1"}}
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {**put, "Item": task_item(task_id, url)}},
            {"Put": {**put, "Item": claim}},
        ]
    )


def item_count(dynamodb: Any, table_name: str) -> int:
    return int(dynamodb.scan(TableName=table_name, Select="COUNT")["Count"])


def moto_call_costs(dynamodb: Any, tables: Mapping[str, str]) -> dict[str, Any]:
    """Single moto calls, one after another: where the rounds' time goes."""
    put_table = tables["floor"]
    service_items = item_count(dynamodb, tables["service"])
    return {
        "PutItem": call_ms(
            lambda: dynamodb.put_item(
                TableName=put_table,
                Item=task_item(str(uuid.uuid4()), "http://127.0.0.1/files/probe"),
                ConditionExpression="attribute_not_exists(pk)",
            )
        ),
        "TransactWriteItems_empty_table": call_ms(lambda: transact_create(dynamodb, tables["empty"])),
        "TransactWriteItems_service_table": call_ms(lambda: transact_create(dynamodb, tables["service"])),
        "service_table_items": service_items,
    }


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Measured:
    floor: list[Round]
    service: list[Round]
    accepted: Accepted
    found: dict[str, dict[str, str]]
    terminal_wait_seconds: float
    moto_ms: dict[str, Any]


def measure(args: argparse.Namespace) -> Measured:
    floor_rounds: list[Round] = []
    service_rounds: list[Round] = []
    accepted = Accepted()
    try:
        return _measure(args, floor_rounds, service_rounds, accepted)
    finally:
        forget_moto_models()


def forget_moto_models() -> None:
    """Let go of every model instance moto has made in this process.

    moto keeps each one (``BaseModel.__new__`` appends it to its class's ``instances_tracked``, for
    its dashboard), the copies of whole tables its transactions take included: after 1000 requests,
    millions of dead objects that every later full garbage collection, and the interpreter's exit
    (for half a minute), would walk. A moto server's start resets them too; none may follow."""
    from moto.core.model_instances import reset_model_data  # noqa: PLC0415  (moto loads every backend)

    reset_model_data()


def _measure(
    args: argparse.Namespace, floor_rounds: list[Round], service_rounds: list[Round], accepted: Accepted
) -> Measured:
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch_dir:
        scratch = Path(scratch_dir)
        with (
            FileServer() as files,
            ReferenceSupernode(
                scratch / "cache", max_concurrent_downloads=MAX_SUPERNODE_DOWNLOADS
            ).start() as sn,
            LocalStack(
                supernodes=[sn.url],
                cache_dir=scratch / "unused",
                extra_env={**QUIET_FUNCTIONS, **dict(args.env)},
                poller_concurrency=args.worker_concurrency,
                state_file=scratch / STATE_FILE_NAME,
                skip_pollers=[WORKER],
            ) as stack,
            worker_process(
                scratch / STATE_FILE_NAME, args.worker_concurrency, scratch / "worker.log"
            ) as worker,
        ):
            parameters = stack.template.parameter_values({SUPERNODES_PARAMETER: sn.url})
            floor = provision(stack.template, stack.moto_url, parameters, name_prefix=FLOOR_PREFIX)
            empty = provision(stack.template, stack.moto_url, parameters, name_prefix=EMPTY_PREFIX)
            tables = {
                "service": stack.table_name(TABLE),
                "floor": floor[TABLE].ref,
                "empty": empty[TABLE].ref,
            }
            floor_queue = floor[QUEUE].ref
            dynamodb = local_client("dynamodb", stack.moto_url)

            floor_clients = FloorClients(stack.moto_url, args.clients)
            warm_up = args.clients * 2
            warm = run_round("warmup", warm_up, preheat_calls(args.clients, stack.api_url, files.url, "warm"))
            run_round("warmup", warm_up, floor_clients.calls(tables["floor"], floor_queue, "warm"))
            empty_queue(stack.moto_url, floor_queue)
            warm_ids = [
                a["data"]["taskId"] for a in warm.answers if isinstance(a, dict) and a.get("code") == 200
            ]
            wait_until_terminal(dynamodb, tables["service"], warm_ids, args.timeout)

            gc.collect()
            gc.freeze()
            waited = 0.0
            found: dict[str, dict[str, str]] = {}
            try:
                for number in range(args.rounds):
                    tag = f"round{number}"
                    # Each kind of round runs alone: the worker paused, neither queue drained while
                    # it runs (moto's SendMessage slows as its queue fills, alike for both), every
                    # queue emptied and every task of the round terminal before the next one.
                    with paused(worker):
                        floor_rounds.append(
                            run_round(
                                "floor", args.requests, floor_clients.calls(tables["floor"], floor_queue, tag)
                            )
                        )
                        empty_queue(stack.moto_url, floor_queue)
                        service = run_round(
                            "service",
                            args.requests,
                            preheat_calls(args.clients, stack.api_url, files.url, tag),
                        )
                    service_rounds.append(service)
                    urls = [file_url(files.url, tag, n) for n in range(args.requests)]
                    accepted.add(service.answers, urls, service.errors)
                    posted = set(urls)
                    round_ids = [task_id for task_id, url in accepted.task_ids.items() if url in posted]
                    round_found, round_waited = wait_until_terminal(
                        dynamodb, tables["service"], round_ids, args.timeout
                    )
                    found.update(round_found)
                    waited = max(waited, round_waited)
                moto_ms = moto_call_costs(dynamodb, tables)
            finally:
                gc.unfreeze()
    return Measured(floor_rounds, service_rounds, accepted, found, waited, moto_ms)


# -- the report -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, measured: Measured) -> dict[str, Any]:
    submitted = args.requests * args.rounds
    floor_rate = median(r.per_second for r in measured.floor)
    service_rate = median(r.per_second for r in measured.service)
    # Each service round is set against the floor round just before it: on a machine whose load
    # drifts (other work on the same cores), a pair sees the same conditions, two medians may not.
    ratios = [s.per_second / f.per_second for f, s in zip(measured.floor, measured.service, strict=True)]
    ratio = median(ratios)
    spread = (
        f"rounds {min(r.per_second for r in measured.service):.1f} to "
        f"{max(r.per_second for r in measured.service):.1f} req/s (floor "
        f"{min(r.per_second for r in measured.floor):.1f} to {max(r.per_second for r in measured.floor):.1f})"
    )
    accepted = measured.accepted
    statuses = {t: measured.found.get(t, {}).get("status") for t in accepted.task_ids}
    terminal = sum(status in TERMINAL for status in statuses.values())
    succeeded = sum(status == "SUCCESS" for status in statuses.values())
    crossed = sum(
        1 for t, url in accepted.task_ids.items() if t in measured.found and measured.found[t]["url"] != url
    )
    moto = measured.moto_ms
    refusals = "; ".join(f"{count} x {what}" for what, count in accepted.refusals.most_common(3))
    figures = {
        "requests_per_second": figure(
            round(service_rate, 1),
            round(TARGET_VS_FLOOR * floor_rate, 1),
            "at least",
            "req/s",
            label="API requests per second",
            detail=f"{args.requests} POST /api/preheat from {args.clients} clients, median of {args.rounds}; "
            f"{spread}; target 0.7 x the floor",
        ),
        "vs_floor": figure(
            round(ratio, 3),
            TARGET_VS_FLOOR,
            "at least",
            "x",
            label="API / floor (TransactWriteItems + SendMessage)",
            detail=f"median of the rounds' ratios ({', '.join(f'{r:.2f}' for r in ratios)}); medians "
            f"{service_rate:.1f} vs {floor_rate:.1f} per second; moto TransactWriteItems "
            f"{moto['TransactWriteItems_service_table']:.1f} ms at {moto['service_table_items']} items, "
            f"{moto['TransactWriteItems_empty_table']:.1f} ms empty, PutItem {moto['PutItem']:.1f} ms",
        ),
        "not_accepted": figure(
            submitted - (len(accepted.task_ids) + accepted.duplicates),
            0,
            "exactly",
            "requests",
            label="answers without a task id",
            detail=refusals,
        ),
        "shared_ids": figure(
            accepted.duplicates,
            0,
            "exactly",
            "requests",
            label="answers naming another request's task",
        ),
        "crossed": figure(
            crossed,
            0,
            "exactly",
            "tasks",
            label="tasks recording another request's URL",
        ),
        "succeeded": figure(
            succeeded,
            submitted,
            "exactly",
            "tasks",
            label="tasks SUCCESS",
            detail="every file is served: a FAIL is the service's error",
        ),
        "failed": figure(
            terminal - succeeded,
            0,
            "exactly",
            "tasks",
            label="tasks FAIL",
        ),
        "lost": figure(
            submitted - terminal,
            0,
            "exactly",
            "tasks",
            label="tasks lost (no answer, or not terminal)",
            detail=f"within {args.timeout:g} s of their round's last answer",
        ),
        "all_terminal_seconds": figure(
            round(measured.terminal_wait_seconds, 2),
            args.timeout,
            "at most",
            "s",
            label="a round's tasks all terminal",
            detail=f"the longest, from the round's last answer; the worker's pace ({args.worker_concurrency} "
            "pollers in a process of its own, paused during the rounds); informational",
        ),
    }
    return {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.throughput", *args.argv]),
        "setup": {
            "requests": args.requests,
            "clients": args.clients,
            "rounds": args.rounds,
            "warmup_requests": args.clients * 2,
            "worker_pollers": args.worker_concurrency,
            "environment": dict(args.env),
            "service": "POST /api/preheat {type: file, url: a URL of its own} through the local API Gateway",
            "floor": "TransactWriteItems (a task-shaped item and its claim) + SendMessage, to twins of the "
            "task table and queue",
            "worker": "its SQS poller in a process of its own (bench._worker_process)",
        },
        "rounds": {
            kind: [{"seconds": round(r.seconds, 3), "per_second": round(r.per_second, 1)} for r in rounds]
            for kind, rounds in (("floor", measured.floor), ("service", measured.service))
        },
        "moto_call_ms": moto,
        "refusals": dict(accepted.refusals),
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    setup = result["setup"]
    return "\n".join(
        [
            f"throughput: {setup['requests']} requests from {setup['clients']} clients, "
            f"{setup['rounds']} round(s) of the floor and of the API",
            table(figure_rows(result["figures"])),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per round (default 1000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the floor and the API (default 3)")
    parser.add_argument(
        "--worker-concurrency", type=int, default=4, help="SQS poller threads for the worker (default 4)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds for a round's tasks to end (120)"
    )
    stack_variables(parser)
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.rounds < 1 or args.worker_concurrency < 1:
        parser.error("--requests, --clients, --rounds and --worker-concurrency must be at least 1")
    args.argv = list(argv)
    quiet_logs()
    # With metrics disabled locally, powertools keeps adding to one metric set and prints it (EMF,
    # on stdout) whenever it reaches 100 values: lines of JSON that would bury the table.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        measured = measure(args)
    result = report(args, measured)
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
