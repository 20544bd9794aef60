"""What the benchmarks share: figures and their table, result files, a delaying reverse proxy, an
AWS call counter, status polling, and a description of the machine.

A figure is ``{"value", "target", "met", "goal", "unit", ...}``: ``met`` is computed from ``goal``
(``at most``, ``at least``, ``below``, ``above``, ``exactly``), so a reader of the JSON (or CI) can
tell at a glance whether the service keeps its promise; ``label`` and ``detail`` are for the tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import urllib3

from local.background import BackgroundServer

GOALS = {"at most": "<=", "at least": ">=", "below": "<", "above": ">", "exactly": "="}


def stack_variables(parser: argparse.ArgumentParser, example: str = "") -> None:
    """``--set NAME=VALUE`` (repeatable, into ``args.env``): a variable for the stack's functions, to
    try a setting without editing anything."""
    parser.add_argument(
        "--set",
        dest="env",
        type=_variable,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a function variable for the stack{', e.g. ' + example if example else ''} (repeatable)",
    )


def _variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def is_met(value: float, target: float, goal: str) -> bool:
    if goal == "at most":
        return value <= target
    if goal == "at least":
        return value >= target
    if goal == "below":
        return value < target
    if goal == "above":
        return value > target
    if goal == "exactly":
        return value == target
    raise ValueError(f"unknown goal {goal!r} (one of {', '.join(GOALS)})")


def figure(
    value: float, target: float, goal: str, unit: str = "", *, label: str = "", detail: str = "", **extra: Any
) -> dict[str, Any]:
    """One figure beside its target; ``met`` follows from ``goal``."""
    item: dict[str, Any] = {
        "value": value,
        "target": target,
        "met": is_met(value, target, goal),
        "goal": goal,
        "unit": unit,
    }
    if label:
        item["label"] = label
    if detail:
        item["detail"] = detail
    return {**item, **extra}


_FORMATS = {"s": "{:.3f} s", "ms": "{:.1f} ms", "x": "{:.2f}x", "MiB": "{:.1f} MiB", "MB": "{:.1f} MB"}


def shown(value: Any, unit: str = "") -> str:
    """A value as the tables print it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return _FORMATS.get(unit, "{:g} " + unit if unit else "{:g}").format(value)


def target_text(item: Mapping[str, Any]) -> str:
    goal = GOALS.get(str(item.get("goal", "")), "")
    text = shown(item["target"], str(item.get("unit", "")))
    return f"{goal} {text}".strip()


def table(rows: Sequence[tuple[str, Mapping[str, Any]]], *, detail: bool = True) -> str:
    """``label, figure`` rows as aligned text: value, target, met (and the figure's detail)."""
    width = max([len("figure"), *(len(label) for label, _ in rows)])
    lines = [f"{'figure':<{width}}  {'value':>12}  {'target':>12}  met"]
    for label, item in rows:
        met = "yes" if item["met"] else "NO"
        value = shown(item["value"], str(item.get("unit", "")))
        line = f"{label:<{width}}  {value:>12}  {target_text(item):>12}  {met:<3}"
        if detail and item.get("detail"):
            line += f"  {item['detail']}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def figure_rows(figures: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(item.get("label") or name), item) for name, item in figures.items()]


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def machine() -> dict[str, Any]:
    """What the figures ran on: they mean little without it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
    }


def machine_line(info: Mapping[str, Any]) -> str:
    return f"{info['cpus']} x {info['cpu']}, {info['memory_gib']} GiB, {info['os']}, Python {info['python']}"


# -- a reverse proxy that delays every answer --------------------------------------------------


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A worker opening a hundred connections at once must not lose SYNs to a short backlog (each
    # lost one costs a second before the client sends it again).
    request_queue_size = 512

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a connection it no longer wants is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; Nagle would hold the body back for the client's
    # delayed ACK.
    disable_nagle_algorithm = True
    timeout = 60
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.proxy.forward(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET


class ProxiedRequest:
    """One request the proxy forwarded: what, and when it arrived and was answered (monotonic)."""

    __slots__ = ("answered", "arrived", "method", "path", "status")

    def __init__(self, method: str, path: str, arrived: float) -> None:
        self.method = method
        self.path = path
        self.arrived = arrived
        self.answered = arrived
        self.status = 0


class DelayProxy(BackgroundServer):
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) that holds every
    answer back ``delay`` seconds once the upstream has given it: a server ``delay`` away.

    The ``Host`` header passes through unchanged, so URLs the upstream builds from it (a registry's
    ``Location``) point at the proxy. It keeps every request in :attr:`requests` and the most it
    had in flight at once in :attr:`peak_in_flight` (reset by :meth:`mark`).
    """

    def __init__(self, upstream: str, delay: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.requests: list[ProxiedRequest] = []
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._pool = urllib3.PoolManager(maxsize=256, block=False, retries=False)
        super().__init__(_ProxyServer(self), "delay-proxy")

    def mark(self) -> int:
        """Where the request log is now (see :meth:`since`); resets the in-flight peak."""
        with self._lock:
            self.peak_in_flight = self.in_flight
            return len(self.requests)

    def since(self, mark: int) -> list[ProxiedRequest]:
        with self._lock:
            return self.requests[mark:]

    def close(self) -> None:
        super().close()
        self._pool.clear()

    def forward(self, handler: _ProxyHandler) -> None:
        record = ProxiedRequest(handler.command, handler.path.split("?", 1)[0], time.monotonic())
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length else None
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            try:
                answer = self._pool.request(
                    handler.command,
                    self.upstream + handler.path,
                    body=body,
                    headers=headers,
                    redirect=False,
                    preload_content=True,
                    decode_content=False,
                    timeout=urllib3.Timeout(connect=5, read=60),
                )
                status, payload = answer.status, answer.data
                answer_headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP]
            except urllib3.exceptions.HTTPError as exc:
                status, payload, answer_headers = 502, f"proxy: {exc}".encode(), []
            time.sleep(self.delay)
            handler.send_response(status)
            for name, value in answer_headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
            record.status = status
        finally:
            record.answered = time.monotonic()
            with self._lock:
                self.in_flight -= 1


# -- counting the project's AWS calls ---------------------------------------------------------


class CallCounter:
    """A botocore ``before-call`` hook counting API calls as ``service:Operation`` (and the HTTP
    requests behind them, retries included, through ``before-send``)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self._lock = threading.Lock()

    def on_call(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    def on_send(self, **_: Any) -> None:
        with self._lock:
            self.requests += 1

    def take(self) -> tuple[collections.Counter[str], int]:
        """The calls and requests counted since the last take."""
        with self._lock:
            taken, self.calls = self.calls, collections.Counter()
            sent, self.requests = self.requests, 0
        return taken, sent

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


# -- the Preheat API ----------------------------------------------------------------------------


class TaskFailed(RuntimeError):
    pass


def api_session() -> requests.Session:
    """A client of the local Preheat API that opens a connection per request.

    The API Gateway stand-in (``local.apigateway``) writes an answer's headers and body apart
    without TCP_NODELAY, so on a kept-alive connection each answer waits ~40 ms for the client's
    delayed ACK: a flaw of the stand-in that API Gateway does not have. A fresh connection costs
    well under a millisecond on 127.0.0.1 and is not held back."""
    session = requests.Session()
    session.headers["Connection"] = "close"
    return session


def quiet_logs() -> None:
    """moto's werkzeug logs every request at INFO; the handlers' INFO lines would bury the tables."""
    for name in ("werkzeug", "botocore", "local", "preheat", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def preheat_and_wait(
    session: requests.Session,
    api_url: str,
    body: Mapping[str, Any],
    *,
    poll_interval: float,
    timeout: float = 120.0,
) -> tuple[str, float]:
    """POST ``body``, then read the status every ``poll_interval`` until it is not RUNNING.

    Returns the task id and the seconds from just before the POST to the answer saying SUCCESS;
    raises :class:`TaskFailed` for FAIL or when it stays RUNNING past ``timeout``."""
    started = time.perf_counter()
    answer = session.post(f"{api_url}/api/preheat", json=dict(body), timeout=30).json()
    if answer.get("code") != 200:
        raise TaskFailed(f"POST /api/preheat answered {answer}")
    task_id = str(answer["data"]["taskId"])
    deadline = started + timeout
    while time.perf_counter() < deadline:
        data = session.get(f"{api_url}/api/preheat/{task_id}", timeout=30).json()["data"]
        if data["status"] == "SUCCESS":
            return task_id, time.perf_counter() - started
        if data["status"] != "RUNNING":
            raise TaskFailed(f"task {task_id} ended {data['status']}: {data.get('msg')}")
        time.sleep(poll_interval)
    raise TaskFailed(f"task {task_id} still RUNNING after {timeout:g} s")


# -- timing the functions' invocations ----------------------------------------------------------


class InvocationTimer:
    """Times every function invocation of the local stacks started in this process while it is
    entered (patched on ``LambdaRuntime``, whose ``invoke`` the API stand-in and the pollers call)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float]] = []
        self._lock = threading.Condition()
        self._original: Any = None

    def __enter__(self) -> InvocationTimer:
        from local.lambda_runtime import LambdaRuntime  # noqa: PLC0415

        original = self._original = LambdaRuntime.invoke
        timer = self

        def invoke(runtime: Any, logical_id: str, event: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(runtime, logical_id, event)
            finally:
                with timer._lock:
                    timer.records.append((logical_id, time.perf_counter() - started))
                    timer._lock.notify_all()

        LambdaRuntime.invoke = invoke  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        from local.lambda_runtime import LambdaRuntime  # noqa: PLC0415

        LambdaRuntime.invoke = self._original  # type: ignore[method-assign]

    def durations(self, logical_id: str) -> list[float]:
        with self._lock:
            return [seconds for name, seconds in self.records if name == logical_id]

    def take(self) -> list[tuple[str, float]]:
        with self._lock:
            taken, self.records = self.records, []
        return taken

    def wait_for(self, logical_id: str, timeout: float = 60.0) -> None:
        """Until an invocation of ``logical_id`` has ended since the last :meth:`take`."""
        with self._lock:
            if not self._lock.wait_for(lambda: any(name == logical_id for name, _ in self.records), timeout):
                raise RuntimeError(f"no invocation of {logical_id} ended within {timeout:g} s")


# Public AWS list prices, us-east-1, as of 2026; arm64 Lambda, on-demand DynamoDB, standard SQS,
# REST API Gateway. https://aws.amazon.com/lambda/pricing/, https://aws.amazon.com/dynamodb/pricing/on-demand/,
# https://aws.amazon.com/sqs/pricing/, https://aws.amazon.com/api-gateway/pricing/,
# https://aws.amazon.com/eventbridge/pricing/, https://aws.amazon.com/xray/pricing/
PRICES_USD = {
    "lambda_gb_second": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "dynamodb_write_unit": 0.625 / 1e6,
    "dynamodb_read_unit": 0.125 / 1e6,
    "sqs_request": 0.40 / 1e6,
    "api_request": 3.50 / 1e6,
    "eventbridge_event": 1.00 / 1e6,
    "xray_trace": 5.00 / 1e6,
}
# Each SQS message costs three requests: SendMessage, then the worker's event source's ReceiveMessage
# and DeleteMessage.
SQS_REQUESTS_PER_MESSAGE = 3
