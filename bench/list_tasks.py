"""How fast GET /api/preheat answers a page from a full table, and what the console costs to load.

    .venv/bin/python -m bench.list_tasks [--tasks 10000] [--runs 20]

Runs the local stack (real handlers, moto in server mode) with ``--tasks`` tasks written straight into
its table through the task store (the same items POST /api/preheat writes, one every 0.2 s up to
now, each with the deadline the service gives, creation + 30 min; the newest 2000 SUCCESS, the
others a third each RUNNING, SUCCESS and FAIL; half images and half files). Then, through the local
API: ``--runs`` first pages of 20 (median), the same with ``status=FAIL`` and with
``status=RUNNING``, the empty pages carrying a ``next`` that a ``status=RUNNING`` walk meets before
its first task (the console's "No tasks" beside "Show more"), and the tenth page of 20 (following
cursors). The console: its page's size as served, and, when Debian's chromium and chromedriver are
installed, what a browser fetches to show it the first time (requests and bytes, from the page's
Resource Timing), tasks listed included.

Results go to ``bench/results/list_tasks.json``; each figure is ``{value, target, met}``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import requests

from bench.common import figure, figure_rows, quiet_logs, table, write_result
from local.stack import LocalStack
from preheat.adapters.dynamodb import LIST_INDEX, LIST_SHARDS, DynamoDBTaskStore
from preheat.models import PreheatType, Task, TaskStatus
from preheat.settings import Settings

RESULTS = Path(__file__).parent / "results" / "list_tasks.json"
PAGE = 20
# A page is a handful of index queries whatever the table holds: well under what a person notices.
TARGET_SECONDS = 0.25
DEEP_PAGE = 10
CONSOLE_TARGET_REQUESTS = 3  # the page, the first listing, nothing else
CONSOLE_TARGET_KIB = 64.0
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}

QUICK_ARGS = ["--tasks", "1000", "--runs", "15"]
# The newest tasks are all SUCCESS (a quiet spell after a busy one): a status=RUNNING or FAIL page
# must read past them, which is where a listing that filters after one bounded read of the index
# answers empty pages that carry a ``next``.
NEWEST_FINISHED = 2000
# Seconds between two tasks' creations: 10,000 tasks in the last 33 minutes (a busy spell), so that
# most RUNNING ones are still within their 30-minute deadline.
SPACING_SECONDS = 0.2


def fill(stack: LocalStack, count: int) -> None:
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    store = DynamoDBTaskStore(Settings(table_name=stack.table_name("TasksTable")), client=client)
    now = datetime.now(UTC)
    statuses = (TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAIL)

    def create(n: int) -> None:
        created = now - timedelta(seconds=(count - n) * SPACING_SECONDS)
        image = n % 2 == 0
        status = TaskStatus.SUCCESS if n >= count - min(NEWEST_FINISHED, count // 5) else statuses[n % 3]
        store.create(
            Task(
                task_id=str(uuid.uuid4()),
                type=PreheatType.IMAGE if image else PreheatType.FILE,
                url=f"registry.example.com/team/app:v{n}" if image else f"https://files.example.com/{n}.bin",
                status=status,
                created_at=created,
                # As the service sets it: RUNNING tasks older than the timeout read as FAIL.
                deadline=created + timedelta(seconds=Settings().task_timeout_seconds),
            )
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(count)))


def moto_shard_query_seconds(stack: LocalStack, runs: int = 10) -> float:
    """The median time moto takes for one shard's query of 10 (a page costs LIST_SHARDS of them):
    moto walks the whole table for every index query, where DynamoDB reads only the page."""
    client = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        client.query(
            TableName=stack.table_name("TasksTable"),
            IndexName=LIST_INDEX,
            KeyConditionExpression="listShard = :s",
            ExpressionAttributeValues={":s": {"S": "tasks#0"}},
            ScanIndexForward=False,
            Limit=10,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_get(url: str, params: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = requests.get(url, params=params, timeout=30)
    elapsed = time.perf_counter() - started
    body = answer.json()
    if body.get("code") != 200:
        raise RuntimeError(f"the listing answered {body}")
    data: dict[str, Any] = body["data"]
    return elapsed, data


def first_tasks(url: str, params: dict[str, str]) -> dict[str, Any]:
    """Follow ``next`` from the first page until a page shows a task (as the console's "Show more"
    does), counting the calls and the empty pages on the way."""
    calls = empty = 0
    seconds = 0.0
    query = dict(params)
    while True:
        took, data = timed_get(url, query)
        calls += 1
        seconds += took
        if data["tasks"] or data.get("next") is None:
            return {"calls": calls, "empty_pages": empty, "seconds": seconds}
        empty += 1
        query = {**params, "cursor": data["next"]}


def console_load(url: str) -> dict[str, Any] | None:
    """Requests and bytes a fresh headless chromium fetches to show the console with its first listing."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver  # noqa: PLC0415 - only when a browser is there
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    with tempfile.TemporaryDirectory() as profile:
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            browser.get(url)
            WebDriverWait(browser, 30).until(lambda d: d.find_elements("css selector", "#tasks tbody tr"))
            entries: list[dict[str, Any]] = browser.execute_script(
                "return [performance.getEntriesByType('navigation')[0],"
                " ...performance.getEntriesByType('resource')]"
                ".map(e => ({name: e.name, bytes: e.transferSize, body: e.encodedBodySize}))"
            )
        finally:
            browser.quit()
    # Only what the first view needed: the page and its first listing (later 2 s refreshes excluded).
    first_listing = next(e for e in entries if "/api/preheat?" in e["name"])
    shown = [entries[0], first_listing]
    return {
        "requests": len(shown),
        "bytes": sum(int(e["bytes"]) for e in shown),
        "entries": [{"url": e["name"].split("?")[0], "bytes": e["bytes"]} for e in shown],
        "other_requests": len([e for e in entries[1:] if "/api/preheat?" not in e["name"]]),
    }


def measure(tasks: int, runs: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as cache,
        LocalStack(cache_dir=cache, extra_env=QUIET_FUNCTIONS) as stack,
    ):
        started = time.perf_counter()
        fill(stack, tasks)
        fill_seconds = time.perf_counter() - started
        shard_query = moto_shard_query_seconds(stack)
        listing = f"{stack.api_url}/api/preheat"
        timed_get(listing, {"limit": str(PAGE)})  # a warm function, as a deployed one mostly is
        first = [timed_get(listing, {"limit": str(PAGE)}) for _ in range(runs)]
        failed = [timed_get(listing, {"limit": str(PAGE), "status": "FAIL"}) for _ in range(runs)]
        running = [timed_get(listing, {"limit": str(PAGE), "status": "RUNNING"}) for _ in range(runs)]
        walk = first_tasks(listing, {"limit": str(PAGE), "status": "RUNNING"})
        assert all(len(data["tasks"]) == PAGE for _, data in first)
        # The cursor of page DEEP_PAGE (or of the last page, in a smaller table).
        deep_query = {"limit": str(PAGE)}
        for _ in range(DEEP_PAGE - 1):
            following = timed_get(listing, deep_query)[1]["next"]
            if following is None:
                break
            deep_query = {"limit": str(PAGE), "cursor": following}
        deep = [timed_get(listing, deep_query) for _ in range(runs)]
        page = requests.get(f"{stack.api_url}/console", timeout=30)
        load = console_load(f"{stack.api_url}/console")
    median = statistics.median(seconds for seconds, _ in first)
    figures: dict[str, Any] = {
        "list_page_median_seconds": figure(
            round(median, 4),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"list: first page of {PAGE} (median)",
            detail=(
                f"{tasks} tasks, {runs} runs, through the local API; moto answers each of the "
                f"{LIST_SHARDS} shard queries in {shard_query * 1000:.0f} ms (it scans the table)"
            ),
        ),
        "list_fail_page_median_seconds": figure(
            round(statistics.median(s for s, _ in failed), 4),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"list: first page of {PAGE}, status=FAIL (median)",
            detail="a third of the older tasks match",
        ),
        "list_running_page_median_seconds": figure(
            round(statistics.median(s for s, _ in running), 4),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"list: first page of {PAGE}, status=RUNNING (median)",
            detail=(
                f"the newest {min(NEWEST_FINISHED, tasks // 5)} tasks are SUCCESS; the first page "
                f"shows {len(running[0][1]['tasks'])} tasks"
            ),
        ),
        "list_empty_pages_with_next": figure(
            walk["empty_pages"],
            0,
            "exactly",
            "pages",
            label="list: status=RUNNING, empty pages that carry next before the first task",
            detail=f"{walk['calls']} calls, {walk['seconds']:.3f} s until a page shows a task",
        ),
        "list_deep_page_median_seconds": figure(
            round(statistics.median(s for s, _ in deep), 4),
            TARGET_SECONDS,
            "at most",
            "s",
            label=f"list: page {DEEP_PAGE} of {PAGE} by cursor (median)",
        ),
        "console_page_kib": figure(
            round(len(page.content) / 1024, 1),
            CONSOLE_TARGET_KIB,
            "at most",
            "KiB",
            label="console page size (HTML, CSS and JS in one)",
            detail="uncompressed, as API Gateway serves it",
        ),
    }
    if load is not None:
        figures["console_load_requests"] = figure(
            load["requests"],
            CONSOLE_TARGET_REQUESTS,
            "at most",
            "requests",
            label="console first view: requests",
            detail=", ".join(f"{e['url'].rsplit('/', 1)[-1] or '/'} {e['bytes']} B" for e in load["entries"]),
        )
        figures["console_load_kib"] = figure(
            round(load["bytes"] / 1024, 1),
            CONSOLE_TARGET_KIB,
            "at most",
            "KiB",
            label="console first view: bytes transferred",
            detail="the console lists 25 tasks a page; then one listing every 2 s",
        )
    return {
        "benchmark": "list_tasks",
        "tasks": tasks,
        "runs": runs,
        "fill_seconds": round(fill_seconds, 1),
        "moto_shard_query_seconds": round(shard_query, 4),
        "first_page_seconds": sorted(round(s, 4) for s, _ in first),
        "console_load": load,
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    # A median of 20 is telling enough for a 0.25 s target that moto's table scans miss by about
    # 0.1 s; the 30 fewer pages of each kind (90 requests at about 0.4 s) keep `make bench` under
    # 15 minutes.
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet_logs()
    result = measure(args.tasks, args.runs)
    print(
        f"listing {PAGE} of {args.tasks} tasks, {args.runs} runs (table filled in {result['fill_seconds']} s)"
    )
    print(table(figure_rows(result["figures"])))
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
