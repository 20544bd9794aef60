"""How long after the supernode finishes a blob the status answer shows SUCCESS.

    .venv/bin/python -m bench.completion_notice [--runs 20] [--finish-delay 3] [--parallel 5]

Runs the local stack (real handlers, moto in server mode, the SQS poller) against the reference
supernode made to finish each blob ``--finish-delay`` seconds after it starts. Each run preheats a
file of its own (a distinct URL, so no run finds the blob already warm), reads the status every
20 ms, and takes the time from the supernode's recorded finish to the first answer saying SUCCESS.
The systems this service replaces notice on a 10 s poll: up to 10 s, 5 s on average.

Results go to ``bench/results/completion_notice.json``; each figure is ``{value, target, met}``.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.common import figure, figure_rows, quiet_logs, table, write_result
from local.stack import LocalStack
from local.supernode import ReferenceSupernode

RESULTS = Path(__file__).parent / "results" / "completion_notice.json"
TARGET_SECONDS = 1.0
REPLACED_SYSTEMS_POLL_SECONDS = 10.0
SPEEDUP_TARGET = 5.0
# The handlers log at INFO on stdout, which would bury the table.
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}

QUICK_ARGS = ["--runs", "6", "--parallel", "3"]


def serve_file(root: Path) -> http.server.ThreadingHTTPServer:
    (root / "blob.bin").write_bytes(b"x" * 4096)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def one_run(stack: LocalStack, supernode: ReferenceSupernode, url: str) -> float:
    answer = requests.post(
        f"{stack.api_url}/api/preheat", json={"type": "file", "url": url}, timeout=10
    ).json()
    task_id = answer["data"]["taskId"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()["data"]["status"]
        if status != "RUNNING":
            seen = datetime.now(UTC)
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"task {task_id} still RUNNING after 120 s")
    if status != "SUCCESS":
        raise RuntimeError(f"task {task_id} ended {status}")
    [record] = [task for task in supernode.tasks().values() if task.url == url]
    assert record.finish_time is not None
    return (seen - record.finish_time).total_seconds()


def measure(runs: int, finish_delay: float, parallel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "files").mkdir()
        files = serve_file(root / "files")
        base = f"http://127.0.0.1:{files.server_address[1]}"
        try:
            with (
                ReferenceSupernode(root / "cache", finish_delay=finish_delay).start() as supernode,
                LocalStack(
                    supernodes=[supernode.url], cache_dir=root / "unused", extra_env=QUIET_FUNCTIONS
                ) as stack,
                ThreadPoolExecutor(max_workers=parallel) as pool,
            ):
                urls = [f"{base}/blob.bin?run={n}-{time.time_ns()}" for n in range(runs)]
                notices = list(pool.map(lambda url: one_run(stack, supernode, url), urls))
        finally:
            files.shutdown()
            files.server_close()
    median = statistics.median(notices)
    speedup = (REPLACED_SYSTEMS_POLL_SECONDS / 2) / max(median, 1e-3)
    return {
        "benchmark": "completion_notice",
        "runs": runs,
        "finish_delay_seconds": finish_delay,
        "notice_seconds": sorted(round(n, 3) for n in notices),
        "figures": {
            "completion_notice_median_seconds": figure(
                round(median, 3),
                TARGET_SECONDS,
                "at most",
                "s",
                label="completion notice (median)",
                detail=f"supernode done to SUCCESS shown, d = {finish_delay:g} s, {runs} runs",
            ),
            "completion_notice_max_seconds": figure(
                round(max(notices), 3),
                REPLACED_SYSTEMS_POLL_SECONDS,
                "at most",
                "s",
                label="completion notice (worst)",
                detail="the systems replaced: up to a 10 s poll",
            ),
            "speedup_vs_10s_poll_average": figure(
                round(speedup, 1),
                SPEEDUP_TARGET,
                "at least",
                "x",
                label="completion notice vs 10 s poll (5 s average)",
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--finish-delay", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet_logs()
    result = measure(args.runs, args.finish_delay, args.parallel)
    print(f"completion notice over {args.runs} runs, supernode finishing after {args.finish_delay}s")
    print(table(figure_rows(result["figures"])))
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
