"""``python -m local.supernode``: run the reference Dragonfly 1 supernode alone."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from local.supernode import ReferenceSupernode

log = logging.getLogger("local.supernode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.supernode",
        description="Run the reference Dragonfly 1 supernode (a local tool, not for production).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--cache-dir", type=Path, default=Path(".supernode-cache"))
    parser.add_argument("--max-concurrent-downloads", type=int, default=4)
    parser.add_argument(
        "--finish-delay", type=float, default=0.0, help="seconds to wait before finishing a task"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with ReferenceSupernode(
        args.cache_dir,
        host=args.host,
        port=args.port,
        max_concurrent_downloads=args.max_concurrent_downloads,
        finish_delay=args.finish_delay,
    ):
        # A short wait in a loop so the signal handler runs promptly on every platform.
        while not stop.wait(0.5):
            pass
    log.info("stopped")
    return 0
