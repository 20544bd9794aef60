"""How a preheat lives through a registry outage on the default settings (the template's timings,
no scaling): ``python -m tests.reliability.outage_recovery --outage 20``.

Starts the local stack as ``make run`` does (the template as it is, the reference supernode), puts
an image on a :class:`~tests.reliability.faults.FaultyRegistry` whose manifest answers 503 for
``--outage`` seconds from the first request, submits the preheat and follows it. Prints, as JSON:
when the outage ended and the task ended (seconds after the outage's end), the task's status and
msg, and the gaps between the step's attempts (bursts of manifest requests: one attempt tries up
to four times within a second or so). A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import requests

from local.stack import LocalStack
from tests.reliability.faults import FaultyRegistry, Script, http_error, make_image

BURST_SECONDS = 0.9  # manifest requests closer than this belong to one attempt


def attempts(times: list[float]) -> list[float]:
    """The start of each attempt: the first request of each burst."""
    starts: list[float] = []
    for earlier, moment in zip([None, *times], times, strict=False):
        if earlier is None or moment - earlier > BURST_SECONDS:
            starts.append(moment)
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the registry answers 503")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds to follow the task at most")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, FaultyRegistry() as registry:
        image = make_image(
            "outage/app", "v1", b'{"config": {}}', [b"layer one\n" * 100, b"layer two\n" * 100]
        )
        registry.add_image(image)
        registry.break_("outage/app", "manifest", Script.outage(http_error(503), args.outage))
        with LocalStack(cache_dir=Path(work) / "cache", parameters={"LogLevel": "ERROR"}) as stack:
            body = {"type": "image", "url": f"{registry.host}/outage/app:v1"}
            answer = requests.post(f"{stack.api_url}/api/preheat", json=body, timeout=30).json()
            task_id = answer["data"]["taskId"]
            started = time.monotonic()
            status: dict[str, object] = {}
            while time.monotonic() - started < args.limit:
                status = requests.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=30).json()["data"]
                if status["status"] != "RUNNING":
                    break
                time.sleep(0.1)
            ended = time.monotonic()
            seen = [request.at for request in registry.requests_for("outage/app", "manifest")]
    outage_end = seen[0] + args.outage if seen else float("nan")
    starts = attempts(seen)
    gaps = [round(later - earlier, 2) for earlier, later in itertools.pairwise(starts)]
    print(
        json.dumps(
            {
                "outage_seconds": args.outage,
                "status": status.get("status"),
                "msg": status.get("msg"),
                "seconds_from_outage_end_to_end": round(ended - outage_end, 2),
                "attempts": len(starts),
                "gaps_between_attempts": gaps,
                "longest_gap": max(gaps, default=0.0),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
