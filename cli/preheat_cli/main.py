"""The ``preheat`` command: ``image``, ``file``, ``status``, ``list``, ``check``, ``peers`` and
``evict`` against the Preheat API.

Exit codes: 0 success; 1 a FAIL task, an API error answer, a timeout or an unreachable API; 2 bad
usage; 130 interrupted while waiting (the task itself goes on).

Header values are credentials: they go to the API and nowhere else, not into messages, errors or
``--json`` output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from preheat_cli import lifecycle
from preheat_cli.client import ClientError, Envelope, PreheatClient, display_url
from preheat_cli.endpoint import (
    API_KEY_VARIABLE,
    DEFAULT_ENDPOINT,
    ENDPOINT_VARIABLE,
    default_endpoint,
    local_events_file,
)
from preheat_cli.progress import SUCCESS, NoView, ProgressView, describe, make_view
from preheat_cli.waiting import EventsFile, WaitTimeout, wait_for_task

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PAGE_SIZE = 100  # the API's largest page
MAX_LISTED = 1000

DEFAULT_TIMEOUT = 1800.0
DEFAULT_INTERVAL = 1.0
# RFC 9110 token characters: what the API accepts as a header name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

EPILOG = f"""\
examples:
  preheat check
  preheat image 127.0.0.1:5001/demo/app:v1 --wait
  preheat image registry.example.com/team/app:v2 --platform linux/amd64 \\
      --header "Authorization=Basic $(printf %s "$USER:$PASS" | base64)" --wait
  preheat file https://example.com/model.bin --wait --json
  preheat status 5f0c6b7e-3f0e-4b55-9a43-6c2d4a1e9b10 --detail
  preheat peers 5f0c6b7e-3f0e-4b55-9a43-6c2d4a1e9b10
  preheat evict 5f0c6b7e-3f0e-4b55-9a43-6c2d4a1e9b10

endpoint: --endpoint, else ${ENDPOINT_VARIABLE}, else the local stack `make run` started (found
through .local/stack.json), else {DEFAULT_ENDPOINT}.

exit codes: 0 success (SUCCESS with --wait), 1 FAIL, an API error, a timeout or no connection,
2 bad usage, 130 interrupted while waiting (the task goes on).
"""


class Output:
    """stdout carries results (only the API's JSON with ``--json``); stderr carries errors."""

    def __init__(self, json_mode: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json_mode = json_mode
        self.stdout = stdout
        self.stderr = stderr

    def envelope(self, answer: Envelope) -> None:
        if self.json_mode:
            print(json.dumps(answer.body), file=self.stdout, flush=True)

    def line(self, text: str = "") -> None:
        if not self.json_mode:
            print(text, file=self.stdout, flush=True)

    def error(self, text: str) -> None:
        print(f"preheat: {text}", file=self.stderr, flush=True)

    def api_error(self, answer: Envelope) -> int:
        self.envelope(answer)
        self.error(f"error {answer.code}: {answer.msg}")
        return EXIT_FAILED


# -- argument types ------------------------------------------------------------------------------


def header_argument(text: str) -> tuple[str, str]:
    """``NAME=VALUE``. Messages never repeat the argument: it holds a credential."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError("expects NAME=VALUE (the argument is not shown: it may be a secret)")
    if not _HEADER_NAME.match(name):
        # "Authorization: Bearer abc=" splits at the token's padding; the API's own message would
        # quote the "name", token and all.
        raise argparse.ArgumentTypeError(
            "the part before '=' is not a header name; write NAME=VALUE, e.g. Authorization=Bearer ..."
        )
    return name, value


def limit_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LISTED:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LISTED}, got {value}")
    return value


def seconds_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expects a positive number of seconds, got {text!r}")
    return value


# -- the parser ----------------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    """The global options, accepted before and after the command (``preheat check --json``).

    In a subcommand they default to SUPPRESS, so one not given there leaves the value parsed before
    the command (or the top level's default) alone.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_subcommand else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--endpoint",
        default=default(None),
        metavar="URL",
        help=f"the API's base URL (default: ${ENDPOINT_VARIABLE}, the running local stack, "
        f"{DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--api-key",
        default=default(None),
        metavar="KEY",
        help=f"API Gateway key, sent as x-api-key (default: ${API_KEY_VARIABLE}, which keeps it out of ps)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answer only (with --wait: the final status answer), no progress",
    )
    group.add_argument(
        "--timeout",
        type=seconds_argument,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"how long --wait waits before exiting 1 (default: {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--interval",
        type=seconds_argument,
        default=default(DEFAULT_INTERVAL),
        metavar="SECONDS",
        help=f"seconds between status polls with --wait (default: {DEFAULT_INTERVAL:g})",
    )
    group.add_argument(
        "--progress",
        choices=("auto", "bar", "plain"),
        default=default("auto"),
        help="--wait's display: a bar on a terminal and plain lines elsewhere (auto, the default), "
        "or either one always",
    )


def _add_header_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--header",
        type=header_argument,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header the service sends to the registry or server (repeatable), e.g. Authorization=...",
    )


def _add_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="follow the task until it ends; exit 0 on SUCCESS, 1 on FAIL"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preheat",
        description="Preheat container images and files into Dragonfly's P2P cache through the Preheat API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_options(parser, in_subcommand=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    image = commands.add_parser(
        "image",
        help="preheat every blob of an image",
        description="Preheat every blob (layers and config) of an image.",
    )
    image.add_argument(
        "url", metavar="REF", help="<registry>/<name>:<tag>, ...@sha256:<hex>, or a manifest URL"
    )
    image.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="only this platform's image of a multi-platform index (repeatable, or comma-separated)",
    )
    _add_header_option(image)
    _add_wait_option(image)
    _add_common_options(image, in_subcommand=True)
    image.set_defaults(handler=_submit, type="image")

    file = commands.add_parser("file", help="preheat one file", description="Preheat one file by URL.")
    file.add_argument("url", metavar="URL", help="an http:// or https:// URL")
    _add_header_option(file)
    _add_wait_option(file)
    _add_common_options(file, in_subcommand=True)
    file.set_defaults(handler=_submit, type="file", platform=[])

    status = commands.add_parser(
        "status", help="show a task's status", description="Show a preheat task's status."
    )
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--detail", action="store_true", help="list every blob on every supernode")
    _add_wait_option(status)
    _add_common_options(status, in_subcommand=True)
    status.set_defaults(handler=_status)

    listing = commands.add_parser(
        "list",
        help="list recent tasks, newest first",
        description="List recent preheat tasks, newest first (one line each; --json: the API's answer).",
    )
    listing.add_argument("--status", choices=("RUNNING", "SUCCESS", "FAIL"), help="only tasks in this status")
    listing.add_argument("--type", choices=("image", "file"), help="only images, or only files")
    listing.add_argument(
        "--limit",
        type=limit_argument,
        default=20,
        metavar="N",
        help=f"at most N tasks (default 20, at most {MAX_LISTED}; read {PAGE_SIZE} a page)",
    )
    _add_common_options(listing, in_subcommand=True)
    listing.set_defaults(handler=_list)

    check = commands.add_parser(
        "check",
        help="check that the API reaches every supernode",
        description="Check that the API is up and reaches every Dragonfly supernode.",
    )
    _add_common_options(check, in_subcommand=True)
    check.set_defaults(handler=_check)
    lifecycle.add_commands(commands, lambda sub: _add_common_options(sub, in_subcommand=True))
    return parser


# -- commands ------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, PreheatClient, Output], int]


def _check(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    answer = client.check()
    if not answer.ok:
        return out.api_error(answer)
    out.envelope(answer)
    out.line(f"ok: the Preheat API at {display_url(client.endpoint)} reaches every supernode")
    return EXIT_OK


def _submit(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    platforms = [p.strip() for entry in args.platform for p in entry.split(",") if p.strip()]
    answer = client.submit(args.type, args.url, headers=dict(args.header), platforms=platforms)
    if not answer.ok:
        return out.api_error(answer)
    task_id = answer.data.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        out.envelope(answer)
        out.error("the API accepted the request but answered no taskId")
        return EXIT_FAILED
    if not args.wait:
        out.envelope(answer)
        out.line(task_id)  # alone on stdout, so TASK=$(preheat image ...) works
        return EXIT_OK
    out.line(f"task {task_id} submitted; waiting (Ctrl-C stops waiting, not the task)")
    return _follow(args, client, out, task_id, detail=False)


def _list(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    tasks: list[Any] = []
    cursor: str | None = None
    while True:
        answer = client.list(args.status, args.type, min(PAGE_SIZE, args.limit - len(tasks)), cursor)
        if not answer.ok:
            return out.api_error(answer)
        tasks += answer.data.get("tasks") or []
        cursor = answer.data.get("next")
        if not cursor or len(tasks) >= args.limit:
            break
    # --json: one answer shaped like the API's, the pages joined; its next continues after the last.
    out.envelope(Envelope({"code": 200, "data": {"tasks": tasks, "next": cursor}}))
    for line in task_lines(tasks):
        out.line(line)
    if not tasks:
        out.line("no tasks")
    return EXIT_OK


def _status(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    if args.wait:
        return _follow(args, client, out, args.task_id, detail=args.detail)
    answer = client.status(args.task_id, args.detail)
    if not answer.ok:
        return out.api_error(answer)
    out.envelope(answer)
    for line in summary(answer.data):
        out.line(line)
    return EXIT_OK


@contextmanager
def _showing(view: ProgressView) -> Iterator[None]:
    view.start()
    try:
        yield
    finally:
        view.stop()  # also on Ctrl-C: the terminal gets its cursor back


def _follow(args: argparse.Namespace, client: PreheatClient, out: Output, task_id: str, detail: bool) -> int:
    view: ProgressView = NoView() if out.json_mode else make_view(args.progress, out.stdout)
    # The local stack's completion events end the wait as they arrive; elsewhere, the polls do.
    events_file = local_events_file(client.endpoint, os.environ, Path.cwd())
    events = None if events_file is None else EventsFile(events_file)
    try:
        with _showing(view):
            final = wait_for_task(
                client,
                task_id,
                view,
                timeout=args.timeout,
                interval=args.interval,
                detail=detail,
                events=events,
            )
    except WaitTimeout as exc:
        if exc.last is not None:
            out.envelope(exc.last)
        out.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.error(f"stopped waiting; task {task_id} goes on (`preheat status {task_id} --wait`)")
        return EXIT_INTERRUPTED
    if not final.ok:
        return out.api_error(final)
    out.envelope(final)
    data = final.data
    if detail:
        for line in blob_lines(data):
            out.line(line)
    if data.get("status") == SUCCESS:
        out.line(f"SUCCESS: task {task_id}: {describe(data)}")
        return EXIT_OK
    out.error(f"FAIL: task {task_id}: {data.get('msg') or 'the service gave no reason'}")
    return EXIT_FAILED


# -- human-readable status -----------------------------------------------------------------------


def summary(data: Mapping[str, Any]) -> list[str]:
    """A status answer's ``data`` as aligned ``name value`` lines, then the blobs if it lists them."""
    rows: list[tuple[str, str]] = [
        ("task", str(data.get("taskId", ""))),
        ("status", str(data.get("status", ""))),
        ("type", str(data.get("type", ""))),
        ("url", str(data.get("url", ""))),
    ]
    for key, label in (("platform", "requested"), ("platforms", "platforms")):
        value = data.get(key)
        if isinstance(value, list) and value:
            rows.append((label, ", ".join(map(str, value))))
    layers = data.get("layers")
    if isinstance(layers, Mapping):
        pending = layers.get("pending")
        rows.append(("blobs", describe(data) + (f", {pending} pending" if pending else "")))
    rows.append(("started", str(data.get("startTime") or "")))
    rows.append(("finished", str(data.get("finishTime") or "-")))
    if data.get("msg"):
        rows.append(("msg", str(data["msg"])))
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows] + blob_lines(data)


def task_lines(tasks: Sequence[Any]) -> list[str]:
    """``preheat list``: a line per task (id, status, blobs warm of total, start, URL), and a FAIL's msg."""
    lines = []
    for task in tasks:
        if not isinstance(task, Mapping):
            continue
        layers = task.get("layers")
        warm = f"{layers.get('succeeded')}/{layers.get('total')}" if isinstance(layers, Mapping) else "-"
        started = str(task.get("startTime") or "")[:19].replace("T", " ")
        status = str(task.get("status", ""))
        lines.append(f"{task.get('taskId', '')}  {status:<7}  {warm:>7}  {started}  {task.get('url', '')}")
        if status == "FAIL" and task.get("msg"):
            lines.append(f"    {task['msg']}")
    return lines


def blob_lines(data: Mapping[str, Any]) -> list[str]:
    """``--detail``: a line per blob per supernode (state, digest or URL, size, supernode, error),
    then, indented, the URL preheated and the task id a node computes for it (to check with
    Dragonfly's own tools)."""
    blobs = data.get("blobs")
    if not isinstance(blobs, list) or not blobs:
        return []
    rows = []
    proofs: list[str] = []
    for blob in blobs:
        if not isinstance(blob, Mapping):
            continue
        url, node_task_id = blob.get("preheatedUrl"), blob.get("nodeTaskId")
        proofs.append(f"    url {url}  node task id {node_task_id}" if url and node_task_id else "")
        what = str(blob.get("digest") or blob.get("url") or "?")
        size = blob.get("size")
        rows.append(
            (
                str(blob.get("state", "")),
                what,
                _size(size) if isinstance(size, int) else "",
                str(blob.get("supernode", "")),
                str(blob.get("error") or ""),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["blobs:"]
    for row, proof in zip(rows, proofs, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append(("  " + "  ".join(cells) + ("  " + row[4] if row[4] else "")).rstrip())
        if proof:
            lines.append(proof)
    return lines


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command and returns its exit code (argparse's exits included, so tests can call it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(args.json, sys.stdout, sys.stderr)
    endpoint = args.endpoint or default_endpoint(os.environ, Path.cwd())
    if not endpoint.startswith(("http://", "https://")):
        out.error(f"the endpoint must be an http:// or https:// URL, got {display_url(endpoint)!r}")
        return EXIT_USAGE
    client = PreheatClient(endpoint, api_key=args.api_key or os.environ.get(API_KEY_VARIABLE) or None)
    handler: Handler = args.handler
    try:
        return handler(args, client, out)
    except ClientError as exc:
        out.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
