"""Keep warm: the AWS calls and cost of one keep-warm check, and the time from "blob deleted behind
the service's back" to "re-warmed", through the local stack.

    .venv/bin/python -m bench.keep_warm [--runs 3]

What it runs: the local stack (the real handlers, moto in server mode) with the reference Dragonfly 1
supernode, and a file served over HTTP. One preheat with ``keepWarm`` (``PT5M``) is taken to SUCCESS
through the API. Each run then makes its check due at once (its ``kwNext`` moved into the past in
the table: the benchmark does not wait 5 minutes) and invokes ``SweeperFunction`` once, as its
schedule would:

- a *warm* check: the blob is on the supernode; the check verifies and records;
- a *re-warm* check: the blob is first deleted behind the service's back (the supernode's
  ``DELETE /api/v1/tasks/{id}``); the check finds it missing, deletes the preheat record, re-creates
  it and puts a ``Preheat Task Rewarmed`` event. The time is from the delete to the supernode
  answering ``cdnStatus: SUCCESS`` again (polled every 10 ms), with the sweep's own duration beside it.
  In a deployment, add the wait for the next due check (up to ``every``, to the sweeper's 5 minutes).

How it counts: as ``bench.aws_calls`` does, a botocore ``before-call`` hook on the project's session,
around the one sweeper invocation (so the overdue sweep's one Query per listing shard is in it, a
cost of the sweep, not of the check: both are listed). Priced with ``bench.common.PRICES_USD`` at the
sweeper's MemorySize. Results go to ``bench/results/keep_warm.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from bench import RESULTS
from bench.common import PRICES_USD, CallCounter, InvocationTimer, api_session, quiet_logs, write_result
from local.aws import client as local_client
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from preheat.adapters import aws
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.models import isoformat
from preheat.settings import Settings

NAME = "keep_warm"
SWEEPER = "SweeperFunction"
SWEEP_EVENT = {"id": "bench-keep-warm", "time": "2026-12-06T00:00:00Z"}
FILE_BYTES = 4 * 1024 * 1024
# The overdue sweep's share of every sweep: one Query per ListIndex shard (see preheat.sweeper).
OVERDUE_QUERIES = 8
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
QUICK_ARGS = ["--runs", "1"]


@contextmanager
def file_server(data: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.bin"
    finally:
        server.shutdown()
        server.server_close()


def cost(calls: Mapping[str, int], ms: float, memory_mb: int) -> dict[str, float]:
    """Dollars of one sweep like this: DynamoDB units (items under 1 KB written, 4 KB read; a Query
    of a keys-only index reads at least one unit), events, and the invocation."""
    writes = calls.get("dynamodb:UpdateItem", 0)
    reads = calls.get("dynamodb:GetItem", 0) + calls.get("dynamodb:Query", 0)
    return {
        "dynamodb": writes * PRICES_USD["dynamodb_write_unit"] + reads * PRICES_USD["dynamodb_read_unit"],
        "eventbridge": calls.get("events:PutEvents", 0) * PRICES_USD["eventbridge_event"],
        "lambda": memory_mb / 1024 * ms / 1000 * PRICES_USD["lambda_gb_second"]
        + PRICES_USD["lambda_request"],
    }


def measure(runs: int) -> dict[str, Any]:
    counter, timer = CallCounter(), InvocationTimer()
    records: dict[str, list[dict[str, Any]]] = {"warm": [], "rewarm": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-keep-warm-") as scratch,
        file_server(b"k" * FILE_BYTES) as url,
        timer,
        ReferenceSupernode(Path(scratch) / "cache").start() as supernode,
        LocalStack(
            supernodes=[supernode.url],
            cache_dir=Path(scratch) / "unused",
            parameters={"AllowedRegistries": "127.0.0.1"},
            extra_env=QUIET_FUNCTIONS,
        ) as stack,
        api_session() as http,
    ):
        memory_mb = int(stack.template.raw["Globals"]["Function"]["MemorySize"])
        session = aws.session()
        session.register("before-call", counter.on_call)
        dynamodb = local_client("dynamodb", stack.moto_url)
        table = stack.table_name("TasksTable")
        store = DynamoDBTaskStore(Settings(table_name=table), client=dynamodb)
        until = isoformat(datetime.now(UTC) + timedelta(days=1))
        task_id = http.post(
            f"{stack.api_url}/api/preheat",
            json={"type": "file", "url": url, "keepWarm": {"every": "PT5M", "until": until}},
            timeout=30,
        ).json()["data"]["taskId"]
        for _ in range(3000):
            status = http.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=30).json()["data"]["status"]
            if status != "RUNNING":
                break
            time.sleep(0.01)
        if status != "SUCCESS":
            raise RuntimeError(f"the preheat ended {status}")
        task = store.get(task_id)
        assert task is not None
        [blob] = task.blobs
        info = f"{supernode.url}/api/v1/tasks/{blob.supernode_task_id}"

        def due_now() -> None:
            dynamodb.update_item(
                TableName=table,
                Key={"pk": {"S": task_id}},
                UpdateExpression="SET kwNext = :past",
                ExpressionAttributeValues={
                    ":past": {"S": isoformat(datetime.now(UTC) - timedelta(seconds=1))}
                },
            )

        def sweep() -> tuple[dict[str, Any], dict[str, int], float]:
            counter.take()
            timer.take()
            answer = stack.invoke(SWEEPER, SWEEP_EVENT)
            calls, _ = counter.take()
            [(_, seconds)] = [record for record in timer.take() if record[0] == SWEEPER]
            return answer, dict(sorted(calls.items())), seconds * 1000

        for _ in range(runs):
            due_now()
            answer, calls, ms = sweep()
            assert answer["keepWarm"]["checked"] == [task_id], answer
            assert answer["keepWarm"]["rewarmed"] == {}, answer
            records["warm"].append({"calls": calls, "ms": round(ms, 1), "usd": cost(calls, ms, memory_mb)})

            due_now()
            deleted = time.perf_counter()
            assert requests.delete(info, timeout=5).status_code == 200
            answer, calls, ms = sweep()
            assert list(answer["keepWarm"]["rewarmed"]) == [task_id], answer
            while requests.get(info, timeout=5).json().get("cdnStatus") != "SUCCESS":
                time.sleep(0.01)
            rewarmed = time.perf_counter()
            records["rewarm"].append(
                {
                    "calls": calls,
                    "ms": round(ms, 1),
                    "usd": cost(calls, ms, memory_mb),
                    "deleted_to_rewarmed_ms": round((rewarmed - deleted) * 1000, 1),
                }
            )
        session.unregister("before-call", counter.on_call)
    return {"runs": runs, "memory_mb": memory_mb, "file_bytes": FILE_BYTES, "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    # `python -m bench` names where each benchmark's JSON goes.
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json")
    args = parser.parse_args(argv)
    quiet_logs()
    result = measure(args.runs)
    for kind, rows in result["records"].items():
        for row in rows:
            calls = row["calls"]
            total = sum(calls.values())
            # The check's own: the sweep's calls less the overdue sweep's queries (KeepWarmIndex's
            # per-shard queries stay in: a sweep with no check due pays those alone).
            own = total - OVERDUE_QUERIES
            usd = sum(row["usd"].values())
            rewarm = row.get("deleted_to_rewarmed_ms")
            extra = f", deleted->re-warmed {rewarm} ms" if rewarm is not None else ""
            print(
                f"{kind}: sweep {total} AWS calls ({own} keep-warm) {calls}; "
                f"{row['ms']} ms; ${usd:.8f}{extra}"
            )
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
