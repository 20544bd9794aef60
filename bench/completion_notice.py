"""How long after the supernode finishes the status answer shows SUCCESS, for short and long blobs,
and what watching that closely costs.

    .venv/bin/python -m bench.completion_notice [--delays 3,40,180] [--runs 5] [--long-runs 5]

Runs the local stack (real handlers, moto in server mode, the SQS poller) against the reference
supernode, made to finish each blob the number of seconds its URL asks for (``?finish=40``) after
it starts. Every run preheats a file of its own (a distinct URL, so no run finds the blob already
warm); all runs of all delays go at once, so the whole benchmark takes about the longest delay plus
a few seconds (the 3-minute case about 3.5 minutes). Each run sleeps until a second before its blob
is due, then reads the status every 20 ms, and takes the time from the supernode's recorded finish
to the first answer saying SUCCESS. The systems this service replaces poll every 10 s or slower.

``--long-runs`` sets the runs of delays of 2 minutes and more (default: ``--runs``); the table says
how many each delay had.

The price of watching, per minute a task spends waiting on its supernodes: the worker watches for
most of an invocation (``PREHEAT_CHECK_WINDOW``, 90 s, within the 120 s timeout) and hands the watch
on to a check message at once, so a task-minute costs ``60 s x MemorySize`` of Lambda time (the
upper bound: one task per invocation; records of a batch watch side by side in one invocation and
share it), ``60 / window`` invocations and three SQS requests per hand-over (send, receive,
delete). Measured here: the worker's invocations, their duration, and the check messages sent, over
the task-minutes of all the runs. Priced at the AWS list prices below (us-east-1, arm64).

``--target manager`` measures the Dragonfly 2 manager path instead: the worker drives the fake
manager of ``local/`` on the real manager's refresh schedule (a job's state is written at about 0,
30, 90, 210, 450 s... after its create), whose seed peer finishes each blob as its URL asks. The
notice there is bounded by the schedule, not by the service: a blob done after 5 s reads SUCCESS at
30 s, one done after 40 s at 90 s, a 3-minute one at 210 s. The figures are the notice after the
seed peer finished and the time from the submit to SUCCESS shown, each against the refresh that
must show it (plus the service's own second). Each run waits until a second before that refresh,
then reads every 20 ms.

    .venv/bin/python -m bench.completion_notice --target manager --delays 5,40,180 --runs 1

``--target scheduler`` measures the Dragonfly 2 scheduler path (``PREHEAT_SUPERNODE_API=
dragonfly2-scheduler``): the worker drives the reference scheduler of ``local/`` over gRPC, with the
service's default scope and task-id mode, and the file server holds each blob's bytes the seconds its
URL asks for, so the peer the scope asks for finishes it then. The notice is taken from the last
required peer finishing (``ReferenceScheduler.finished_at``, the latest of the peers that held the
task) to the first status answer saying SUCCESS; the watch is the service's own (its look schedule,
no manager refresh in between).

    .venv/bin/python -m bench.completion_notice --target scheduler --delays 5,40,180 --runs 3 --long-runs 1

Results go to ``bench/results/completion_notice.json`` (``completion_notice_manager.json`` for the
manager, ``completion_notice_scheduler.json`` for the scheduler); each figure is
``{value, target, met}``.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from bench.common import (
    PRICES_USD,
    SQS_REQUESTS_PER_MESSAGE,
    CallCounter,
    InvocationTimer,
    figure,
    figure_rows,
    quiet_logs,
    table,
    write_result,
)
from local.dragonfly2_manager import FakeDragonfly2Manager, refresh_offsets
from local.dragonfly2_scheduler import ReferenceScheduler
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from local.template import Template
from preheat.adapters import aws
from preheat.settings import Settings

RESULTS = Path(__file__).parent / "results" / "completion_notice.json"
MANAGER_RESULTS = Path(__file__).parent / "results" / "completion_notice_manager.json"
SCHEDULER_RESULTS = Path(__file__).parent / "results" / "completion_notice_scheduler.json"
TARGETS = ("supernode", "manager", "scheduler")
# A scheduler peer's read timeout: longer than the longest blob the file server is asked to hold.
SCHEDULER_DOWNLOAD_TIMEOUT = 600.0
MANAGER_TOKEN = "bench-completion-notice-token"
MEDIAN_TARGET_SECONDS = 1.0
WORST_TARGET_SECONDS = 2.0
LONG_DELAY_SECONDS = 120.0
# The handlers log at INFO on stdout, which would bury the table.
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
WORKER = "WorkerFunction"

# Public AWS list prices, us-east-1 (bench.common.PRICES_USD, where they are cited).
LAMBDA_ARM_GB_SECOND_USD = PRICES_USD["lambda_gb_second"]  # Lambda on arm64 (Graviton)
LAMBDA_REQUEST_USD = PRICES_USD["lambda_request"]
SQS_REQUEST_USD = PRICES_USD["sqs_request"]  # standard queue
SQS_REQUESTS_PER_HANDOVER = SQS_REQUESTS_PER_MESSAGE  # each hand-over is one check message
# What one cached image saves, for scale: 1000 nodes pulling a 500 MB image from a registry behind a
# NAT gateway ($0.045/GB processed, https://aws.amazon.com/vpc/pricing/) instead of from the P2P cache.
SAVED_PER_IMAGE_USD = 1000 * 0.5 * 0.045

QUICK_ARGS = ["--delays", "3", "--runs", "6"]
# The measured Lambda time per task-minute also holds each task's start step and the 3 s tasks'
# invocations, which the model of the watch alone leaves out.
MEASURED_SLACK = 1.2


def serve_file(root: Path, *, hold: bool = False) -> http.server.ThreadingHTTPServer:
    """A file server of ``blob.bin``; with ``hold``, each GET answers the seconds its URL's
    ``finish`` asks for after it arrives (how the scheduler's peers are made to take that long)."""
    (root / "blob.bin").write_bytes(b"x" * 4096)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            if hold:
                [delay] = parse_qs(urlsplit(self.path).query).get("finish", ["0"])
                time.sleep(float(delay))
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class TimedSupernode(ReferenceSupernode):
    """The reference supernode, finishing each blob ``finish`` seconds (its URL's query) after it
    starts: blobs of 3 s, 40 s and 3 minutes side by side."""

    def _download(self, task_id: str, url: str, *args: Any, **kwargs: Any) -> Any:
        [delay] = parse_qs(urlsplit(url).query).get("finish", ["0"])
        self._stopping.wait(float(delay))
        return super()._download(task_id, url, *args, **kwargs)


def first_refresh_after(delay: float) -> float:
    """When, after its create, a manager job whose blob takes ``delay`` seconds is first seen done."""
    return min(offset for offset in refresh_offsets() if offset > delay)


def one_run(
    stack: LocalStack,
    finished_of: Callable[[str], datetime],
    url: str,
    delay: float,
    manager: FakeDragonfly2Manager | None = None,
) -> tuple[float, float]:
    """(seconds from the blob's finish (``finished_of(url)``: the supernode's, or the last required
    scheduler peer's) to SUCCESS shown; through a manager, also seconds from the job's create to it,
    else from the submit)."""
    http = requests.Session()
    submitted = datetime.now(UTC)
    answer = http.post(f"{stack.api_url}/api/preheat", json={"type": "file", "url": url}, timeout=10).json()
    task_id = answer["data"]["taskId"]
    # Polls only near the end: a thousand reads a run would be a load of its own on these cores.
    # Through a manager the end cannot show before the refresh that follows the blob's finish.
    time.sleep(max(0.0, (first_refresh_after(delay) if manager is not None else delay) - 1.0))
    deadline = time.monotonic() + delay + (330 if manager is not None else 120)
    while time.monotonic() < deadline:
        status = http.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()["data"]["status"]
        if status != "RUNNING":
            seen = datetime.now(UTC)
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"task {task_id} still RUNNING {delay + 120:g} s after it started")
    if status != "SUCCESS":
        raise RuntimeError(f"task {task_id} ended {status}")
    created = manager.created_at(url) if manager is not None else None
    return (seen - finished_of(url)).total_seconds(), (seen - (created or submitted)).total_seconds()


def supernode_finish(supernode: ReferenceSupernode) -> Callable[[str], datetime]:
    def finished_of(url: str) -> datetime:
        [record] = [task for task in supernode.tasks().values() if task.url == url]
        assert record.finish_time is not None
        return record.finish_time

    return finished_of


def scheduler_finish(scheduler: ReferenceScheduler) -> Callable[[str], datetime]:
    """When the last peer holding the URL's task finished it: only the peers the scope asked for
    download it, so the latest of them is the last required one."""

    def finished_of(url: str) -> datetime:
        finished = scheduler.finished_at(scheduler.task_id(url))
        if not finished:
            raise RuntimeError(f"SUCCESS shown, but no peer of the scheduler finished {url}")
        return datetime.fromtimestamp(max(finished.values()), UTC)

    return finished_of


def target_stack(
    target: str, root: Path, runs: int
) -> tuple[AbstractContextManager[Any], FakeDragonfly2Manager | None, LocalStack, Callable[[str], datetime]]:
    """What the service drives (the timed supernode; a fake manager with it as seed peer for
    ``manager``; the reference scheduler for ``scheduler``), started, the stack driving it (leaving
    the stack's ``with`` block stops neither: stop the first with ``with`` too), and when a URL's
    blob finished there."""
    # Lambda runs as many environments as there are batches; so many pollers here.
    options: dict[str, Any] = {"cache_dir": root / "unused", "poller_concurrency": runs}
    if target == "scheduler":
        scheduler = ReferenceScheduler(download_timeout=SCHEDULER_DOWNLOAD_TIMEOUT).start()
        stack = LocalStack(
            target="dragonfly2-scheduler",
            supernodes=[scheduler.address],
            extra_env=QUIET_FUNCTIONS,
            **options,
        )
        return scheduler, None, stack, scheduler_finish(scheduler)
    supernode = TimedSupernode(root / "cache", max_concurrent_downloads=runs)
    if target != "manager":
        supernode.start()
        stack = LocalStack(supernodes=[supernode.url], extra_env=QUIET_FUNCTIONS, **options)
        return supernode, None, stack, supernode_finish(supernode)
    # On the real schedule (not answer_at_once): what a real manager lets the service see.
    manager = FakeDragonfly2Manager(root / "manager", MANAGER_TOKEN, max_concurrent_downloads=runs)
    manager.seed = supernode  # its seed peer finishes each blob as the URL asks
    manager.start()
    stack = LocalStack(
        supernodes=[manager.url],
        parameters={"SupernodeApi": "dragonfly2"},
        extra_env={**QUIET_FUNCTIONS, "PREHEAT_DRAGONFLY2_TOKEN": MANAGER_TOKEN},
        **options,
    )
    return manager, manager, stack, supernode_finish(supernode)


def measure(delays: Sequence[float], runs: int, long_runs: int, target: str = "supernode") -> dict[str, Any]:
    plan = [(delay, n) for delay in delays for n in range(long_runs if delay >= LONG_DELAY_SECONDS else runs)]
    counter = CallCounter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "files").mkdir()
        files = serve_file(root / "files", hold=target == "scheduler")
        base = f"http://127.0.0.1:{files.server_address[1]}"
        driven, manager, stack_of_target, finished_of = target_stack(target, root, len(plan))
        try:
            with (
                InvocationTimer() as timer,
                driven,
                stack_of_target as stack,
                ThreadPoolExecutor(max_workers=len(plan)) as pool,
            ):
                session = aws.session()
                session.register("before-call", counter.on_call)
                started = time.perf_counter()
                futures = []
                for delay, n in plan:
                    url = f"{base}/blob.bin?finish={delay:g}&run={n}-{time.time_ns()}"
                    futures.append((delay, pool.submit(one_run, stack, finished_of, url, delay, manager)))
                    time.sleep(0.1)  # staggered a little, as real submissions are
                notices: dict[float, list[float]] = {delay: [] for delay in delays}
                since_submit: dict[float, list[float]] = {delay: [] for delay in delays}
                for delay, future in futures:
                    notice, seen_after = future.result()
                    notices[delay].append(notice)
                    since_submit[delay].append(seen_after)
                elapsed = time.perf_counter() - started
                session.unregister("before-call", counter.on_call)
        finally:
            files.shutdown()
            files.server_close()
    calls = counter.calls
    return {
        "target": target,
        "notices": notices,
        "since_submit": since_submit,
        "elapsed": elapsed,
        "invocations": len(timer.durations(WORKER)),
        "invocation_seconds": sum(timer.durations(WORKER)),
        "check_messages": calls.get("sqs:SendMessage", 0) - len(plan),  # less each task's start message
        # Through a manager a task waits for the refresh after its blob, not for the blob alone.
        "task_minutes": sum(first_refresh_after(delay) if target == "manager" else delay for delay, _ in plan)
        / 60,
    }


def watching_price(measured: dict[str, Any]) -> dict[str, Any]:
    template = Template.load(TEMPLATE)
    memory_gb = template.functions[WORKER].memory_size / 1024
    window = Settings().check_window_seconds
    task_minutes = measured["task_minutes"]
    model_gb_s = 60 * memory_gb
    model_invocations = 60 / window
    model_sqs = SQS_REQUESTS_PER_HANDOVER * 60 / window
    model_usd = (
        model_gb_s * LAMBDA_ARM_GB_SECOND_USD
        + model_invocations * LAMBDA_REQUEST_USD
        + model_sqs * SQS_REQUEST_USD
    )
    measured_gb_s = measured["invocation_seconds"] * memory_gb / task_minutes
    measured_invocations = measured["invocations"] / task_minutes
    measured_sqs = (
        SQS_REQUESTS_PER_HANDOVER * (measured["check_messages"] + measured["invocations"]) / 2 / task_minutes
    )
    return {
        "memory_gb": memory_gb,
        "window_seconds": window,
        "per_task_minute_upper_bound": {
            "lambda_gb_seconds": model_gb_s,
            "invocations": round(model_invocations, 3),
            "sqs_requests": round(model_sqs, 3),
            "usd": model_usd,
        },
        "per_task_minute_measured": {
            "lambda_gb_seconds": round(measured_gb_s, 2),
            "invocations": round(measured_invocations, 3),
            "sqs_requests": round(measured_sqs, 3),
        },
        "prices": {
            "lambda_arm64_gb_second_usd": LAMBDA_ARM_GB_SECOND_USD,
            "lambda_request_usd": LAMBDA_REQUEST_USD,
            "sqs_request_usd": SQS_REQUEST_USD,
            "sources": ["https://aws.amazon.com/lambda/pricing/", "https://aws.amazon.com/sqs/pricing/"],
        },
    }


def manager_figures(delays: Sequence[float], measured: dict[str, Any]) -> dict[str, Any]:
    """The manager path's notice, against what its refresh schedule allows: SUCCESS shown within the
    service's own second of the refresh that first follows the blob's finish."""
    figures: dict[str, Any] = {}
    for delay in delays:
        refresh = first_refresh_after(delay)
        name = f"{delay:g}s"
        figures[f"manager_notice_{name}_worst_seconds"] = figure(
            round(max(measured["notices"][delay]), 3),
            round(refresh - delay + MEDIAN_TARGET_SECONDS, 3),
            "at most",
            "s",
            label=f"manager path notice, {delay:g} s blob (worst)",
            detail=f"seed peer done to SUCCESS shown; the manager's refresh at {refresh:g} s bounds it",
        )
        figures[f"manager_seen_{name}_worst_seconds"] = figure(
            round(max(measured["since_submit"][delay]), 3),
            round(refresh + MEDIAN_TARGET_SECONDS, 3),
            "at most",
            "s",
            label=f"manager path, job created to SUCCESS shown, {delay:g} s blob",
            detail=f"{len(measured['notices'][delay])} runs; the job reads SUCCESS from its "
            f"{refresh:g} s refresh",
        )
    return figures


def report(delays: Sequence[float], measured: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if measured.get("target") == "manager":
        figures = manager_figures(delays, measured)
    path = "scheduler path " if measured.get("target") == "scheduler" else ""
    finisher = "last required peer" if path else "supernode"
    for delay in delays if measured.get("target") != "manager" else ():
        notices = measured["notices"][delay]
        name = f"{delay:g}s"
        figures[f"notice_{name}_median_seconds"] = figure(
            round(statistics.median(notices), 3),
            MEDIAN_TARGET_SECONDS,
            "at most",
            "s",
            label=f"{path}completion notice, {delay:g} s blob (median)",
            detail=f"{finisher} done to SUCCESS shown; {len(notices)} runs",
        )
        figures[f"notice_{name}_worst_seconds"] = figure(
            round(max(notices), 3),
            WORST_TARGET_SECONDS,
            "at most",
            "s",
            label=f"{path}completion notice, {delay:g} s blob (worst)",
            detail=f"{len(notices)} runs; the systems replaced poll every 10 s or slower",
        )
    price = watching_price(measured)
    bound = price["per_task_minute_upper_bound"]
    figures["watching_usd_per_task_minute"] = figure(
        round(bound["usd"], 6),
        round(SAVED_PER_IMAGE_USD / 1000, 6),
        "at most",
        "USD",
        label="price of watching, per task-minute (upper bound)",
        detail=(
            f"{bound['lambda_gb_seconds']:g} GB-s, {bound['invocations']:g} invocations, "
            f"{bound['sqs_requests']:g} SQS requests at list prices; target: a thousandth of what one "
            f"cached 500 MB image saves 1000 nodes (${SAVED_PER_IMAGE_USD:.2f} of NAT traffic)"
        ),
    )
    seen = price["per_task_minute_measured"]
    figures["watching_measured_per_task_minute"] = figure(
        seen["lambda_gb_seconds"],
        round(MEASURED_SLACK * bound["lambda_gb_seconds"], 1),
        "at most",
        "GB-s",
        label="Lambda GB-s per task-minute, measured",
        detail=f"{seen['invocations']:g} invocations, {seen['sqs_requests']:g} SQS requests per task-minute; "
        "every worker invocation of the run over the blobs' minutes: the start steps and the short "
        f"tasks' own invocations add to the watch (target {MEASURED_SLACK:g} x the watch alone)",
    )
    return {
        "benchmark": "completion_notice",
        "target": measured.get("target", "supernode"),
        "delays_seconds": list(delays),
        "runs": {f"{delay:g}": len(measured["notices"][delay]) for delay in delays},
        "notice_seconds": {
            f"{delay:g}": sorted(round(n, 3) for n in measured["notices"][delay]) for delay in delays
        },
        "seen_after_seconds": {
            f"{delay:g}": sorted(round(n, 3) for n in measured.get("since_submit", {}).get(delay, []))
            for delay in delays
        },
        "elapsed_seconds": round(measured["elapsed"], 1),
        "watching": price,
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="3,40,180", help="seconds each blob takes, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="runs of each delay")
    parser.add_argument("--long-runs", type=int, default=None, help="runs of delays of 2 minutes and more")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="supernode",
        help="the reference supernode (Dragonfly 1), the fake Dragonfly 2 manager on its real schedule, "
        "or the reference Dragonfly 2 scheduler over gRPC",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    delays = [float(part) for part in args.delays.split(",") if part.strip()]
    quiet_logs()
    long_runs = args.runs if args.long_runs is None else args.long_runs
    measured = measure(delays, args.runs, long_runs, args.target)
    result = report(delays, measured)
    print(
        f"completion notice ({args.target}), blobs taking {args.delays} s, all runs at once "
        f"({result['elapsed_seconds']} s)"
    )
    print(table(figure_rows(result["figures"])))
    outputs = {"manager": MANAGER_RESULTS, "scheduler": SCHEDULER_RESULTS}
    output = args.output or outputs.get(args.target, RESULTS)
    write_result(output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
