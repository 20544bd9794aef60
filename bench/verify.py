"""How long GET /api/preheat/{taskId}/peers (verify) takes for a 100-layer task, on each target.

    .venv/bin/python -m bench.verify [--layers 100] [--runs 5] [--only dragonfly1,scheduler,manager]

For each target the local stack runs with it (real handlers, moto in server mode, the API on a local
port): a Dragonfly 1 reference supernode, the reference Dragonfly 2 scheduler (gRPC, 2 seed peers
and 3 peers), and the fake Dragonfly 2 manager on its real refresh schedule. ``--layers`` blobs are
served by a local origin and preheated on the target through the service's own driver, and the task
that sent them is written into the stack's table as the worker leaves a finished one (every blob
with its supernode task id and node task id). Then, through the local API:

* Dragonfly 1 and the scheduler: ``--runs`` verifies (the first one builds the function's driver);
  the median is the figure. Each answer must show every layer warm.
* The manager: the first verify creates one get_task job per layer and answers ``pending`` (its
  latency is a figure); verifies every second then read the same jobs until the manager's poller
  writes them (the figure: seconds from the first verify to the first answer that is not pending,
  about 30 s on the manager's schedule), and ``--runs`` verifies after that reuse the answers.

Results go to ``bench/results/verify.json``; each figure is ``{value, target, met}``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import requests

from bench.common import figure, figure_rows, quiet_logs, table, write_result
from local.dragonfly2_manager import FakeDragonfly2Manager
from local.stack import SCHEDULER_TARGET, LocalStack
from preheat.models import Blob, BlobProgress, BlobState, PreheatType, Targeting, Task, TaskStatus
from preheat.ports import SupernodeDriver
from preheat.settings import Settings

RESULTS = Path(__file__).parent / "results" / "verify.json"
QUICK_ARGS = ["--layers", "20", "--runs", "3"]
TARGETS = ("dragonfly1", "scheduler", "manager")
TOKEN = "bench-verify-token"
BLOB_BYTES = 4096
# A verify of 100 layers answers well inside API Gateway's 29 s and a person's patience.
TARGET_SECONDS = 2.0
# The manager answers on its refresh schedule: its first refresh after the create writes PENDING,
# the second, 30 s later, the result.
MANAGER_ANSWER_TARGET_SECONDS = 35.0
SCOPE = Targeting(scope="all_seed_peers")
# What one verify asks each target.
CALLS = {"dragonfly1": "one GET /api/v1/tasks/{id} a layer", "scheduler": "a StatFile a layer, one ListHosts"}
WAIT = 120.0  # seconds a preheat may take before the benchmark gives up


class Origin:
    """Serves ``count`` distinct blobs at ``/v2/bench/app/blobs/<digest>``."""

    def __init__(self, count: int) -> None:
        self.blobs = {}
        for n in range(count):
            data = (f"bench verify layer {n}\n".encode() * BLOB_BYTES)[:BLOB_BYTES]
            self.blobs[f"sha256:{hashlib.sha256(data).hexdigest()}"] = data
        blobs = self.blobs

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                data = blobs.get(self.path.split("?", 1)[0].rsplit("/", 1)[-1])
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, digest: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v2/bench/app/blobs/{digest}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def preheat(
    driver: SupernodeDriver, target: str, origin: Origin, done: Callable[[str], bool]
) -> list[BlobProgress]:
    """Every blob of ``origin`` preheated on ``target`` through ``driver``, recorded as the worker
    records it; ``done(task_id)`` says when one is warm."""
    recorded = []
    for digest in origin.blobs:
        blob = Blob(url=origin.url(digest), digest=digest, size=BLOB_BYTES, targeting=SCOPE)
        created = driver.create(target, blob)
        recorded.append(
            BlobProgress(
                label=digest,
                target=target,
                state=BlobState.SUCCESS,
                digest=digest,
                size=BLOB_BYTES,
                supernode_task_id=created.task_id,
                url=blob.url,
                node_task_id=driver.node_task_id(blob),
            )
        )
    deadline = time.monotonic() + WAIT
    for blob in recorded:
        while not done(blob.supernode_task_id or ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{blob.label} was not warm on {target} after {WAIT:g} s")
            time.sleep(0.05)
    return recorded


def write_task(stack: LocalStack, blobs: list[BlobProgress]) -> str:
    """A finished task that sent ``blobs``, written as the worker leaves one."""
    from preheat.adapters.dynamodb import DynamoDBTaskStore  # noqa: PLC0415 - after the stack's env

    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    store = DynamoDBTaskStore(Settings(table_name=stack.table_name("TasksTable")), client=client)
    now = datetime.now(UTC)
    task = Task(
        task_id=str(uuid.uuid4()),
        type=PreheatType.IMAGE,
        url="127.0.0.1:5000/bench/app:v1",
        status=TaskStatus.RUNNING,
        created_at=now,
        deadline=now + timedelta(minutes=30),
        dispatched=True,
        targeting=SCOPE,
    )
    store.create(task)
    finished = replace(
        task, status=TaskStatus.SUCCESS, finished_at=now, blobs=tuple(blobs), check_seq=task.check_seq + 1
    )
    assert store.save(finished, expected_check_seq=task.check_seq)
    return task.task_id


def verify(session: requests.Session, stack: LocalStack, task_id: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = session.get(f"{stack.api_url}/api/preheat/{task_id}/peers", timeout=60)
    seconds = time.perf_counter() - started
    answer = response.json()
    if answer.get("code") != 200:
        raise RuntimeError(f"verify answered {answer}")
    data: dict[str, Any] = answer["data"]
    return seconds, data


def timed_runs(
    session: requests.Session, stack: LocalStack, task_id: str, runs: int, layers: int
) -> list[float]:
    times = []
    for _ in range(runs):
        seconds, data = verify(session, stack, task_id)
        if data["summary"]["layersWarm"] != layers or data["pending"] or data["unreachable"]:
            raise RuntimeError(f"verify did not show {layers} warm layers: {data['summary']}")
        times.append(seconds)
    return times


@contextmanager
def dragonfly1(layers: int, origin: Origin) -> Iterator[tuple[LocalStack, str]]:
    from preheat.adapters.dragonfly1 import Dragonfly1Driver  # noqa: PLC0415

    with LocalStack(cache_dir=tempfile.mkdtemp(prefix="bench-verify-df1-")) as stack:
        target = stack.supernodes[0]
        driver = Dragonfly1Driver(Settings(supernodes=(target,)))
        blobs = preheat(
            driver, target, origin, lambda task_id: driver.status(target, task_id).state is BlobState.SUCCESS
        )
        yield stack, write_task(stack, blobs)


@contextmanager
def scheduler(layers: int, origin: Origin) -> Iterator[tuple[LocalStack, str]]:
    from preheat.adapters.dragonfly2_scheduler import Dragonfly2SchedulerDriver  # noqa: PLC0415

    with LocalStack(
        cache_dir=tempfile.mkdtemp(prefix="bench-verify-df2s-"), target=SCHEDULER_TARGET
    ) as stack:
        reference = stack.reference_scheduler
        assert reference is not None
        target = stack.supernodes[0]
        driver = Dragonfly2SchedulerDriver(Settings(supernodes=(target,), supernode_api=SCHEDULER_TARGET))
        seeds = sum(host.is_seed for host in reference.hosts)
        blobs = preheat(driver, target, origin, lambda task_id: reference.wait_finished(task_id, seeds, 0.05))
        yield stack, write_task(stack, blobs)


@contextmanager
def manager(layers: int, origin: Origin) -> Iterator[tuple[LocalStack, str]]:
    from preheat.adapters.dragonfly2 import Dragonfly2Driver  # noqa: PLC0415

    with ExitStack() as stack_of:
        fake = stack_of.enter_context(
            FakeDragonfly2Manager(
                Path(tempfile.mkdtemp(prefix="bench-verify-df2-")), TOKEN, answer_at_once=True
            )
        )
        stack = stack_of.enter_context(
            LocalStack(
                supernodes=[fake.url],
                parameters={"SupernodeApi": "dragonfly2"},
                extra_env={"PREHEAT_DRAGONFLY2_TOKEN": TOKEN},
                cache_dir=tempfile.mkdtemp(prefix="bench-verify-unused-"),
            )
        )
        driver = Dragonfly2Driver(
            Settings(supernodes=(fake.url,), supernode_api="dragonfly2", dragonfly2_token=TOKEN)
        )
        blobs = preheat(
            driver,
            fake.url,
            origin,
            lambda job_id: driver.status(fake.url, job_id).state is BlobState.SUCCESS,
        )
        # From here on, jobs show what the manager's poller last wrote, on its real schedule.
        fake.answer_at_once = False
        yield stack, write_task(stack, blobs)


def measure(targets: list[str], layers: int, runs: int) -> dict[str, Any]:
    origin = Origin(layers)
    figures: dict[str, Any] = {}
    try:
        with requests.Session() as session:
            for name in targets:
                setup = {"dragonfly1": dragonfly1, "scheduler": scheduler, "manager": manager}[name]
                with setup(layers, origin) as (stack, task_id):
                    if name == "manager":
                        figures.update(manager_figures(session, stack, task_id, runs, layers))
                        continue
                    times = timed_runs(session, stack, task_id, runs + 1, layers)
                    what = CALLS[name]
                    figures[f"{name}_verify_seconds"] = figure(
                        round(statistics.median(times[1:]), 3),
                        TARGET_SECONDS,
                        "at most",
                        "s",
                        label=f"verify {layers} layers, {name}",
                        detail=f"median of {runs} after the first ({times[0]:.3f} s); {what}",
                    )
    finally:
        origin.close()
    return {"benchmark": "verify", "layers": layers, "runs": runs, "figures": figures}


def manager_figures(
    session: requests.Session, stack: LocalStack, task_id: str, runs: int, layers: int
) -> dict[str, Any]:
    first_seconds, first = verify(session, stack, task_id)
    if not first["pending"]:
        raise RuntimeError("a manager's first verify should be pending (its get_task jobs are new)")
    started = time.monotonic() - first_seconds
    polls = 0
    while True:
        time.sleep(1.0)
        polls += 1
        _, data = verify(session, stack, task_id)
        if not data["pending"]:
            break
        if time.monotonic() - started > 120:
            raise RuntimeError("the manager's get_task jobs never answered")
    answered = time.monotonic() - started
    if data["summary"]["layersWarm"] != layers:
        raise RuntimeError(f"the manager's answer did not show {layers} warm layers: {data['summary']}")
    reused = timed_runs(session, stack, task_id, runs, layers)
    return {
        "manager_first_verify_seconds": figure(
            round(first_seconds, 3),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"verify {layers} layers, manager: pending answer",
            detail=f"creates {layers} get_task jobs",
        ),
        "manager_answer_seconds": figure(
            round(answered, 1),
            MANAGER_ANSWER_TARGET_SECONDS,
            "at most",
            "s",
            label=f"verify {layers} layers, manager: until answered",
            detail=f"from the first verify, one every 1 s ({polls} verifies; the manager's 30 s refresh)",
        ),
        "manager_verify_seconds": figure(
            round(statistics.median(reused), 3),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"verify {layers} layers, manager: answered jobs reused",
            detail=f"median of {runs}, within the 60 s an answer is reused",
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    targets = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    quiet_logs()
    result = measure(targets, args.layers, args.runs)
    print(f"verify of a {args.layers}-layer task through the local API, {args.runs} runs")
    print(table(figure_rows(result["figures"])))
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
