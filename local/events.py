"""The local stack's target for the completion events: ``.local/events.jsonl``, one event a line.

The functions put their events on the stack's bus in moto with the real PutEvents call (the bus of
the template's ``EventBusName`` parameter). A rule on that bus, matching what the template's own
``TaskEventsRule`` matches, sends them to an SQS queue, as EventBridge would to any target; this
module drains the queue and appends each event, in EventBridge's envelope (``version``, ``id``,
``detail-type``, ``source``, ``account``, ``time``, ``region``, ``resources``, ``detail``), as one
JSON line to the file, so anyone can ``tail -f`` it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from local.aws import LOCAL_ACCOUNT_ID, LOCAL_REGION, client

log = logging.getLogger("local.events")

DEFAULT_BUS = "default"
# The envelope EventBridge hands its targets (moto adds fields of its own, left out here).
ENVELOPE_KEYS = ("version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail")
EVENT_PATTERN = {"source": ["preheat"], "detail-type": ["Preheat Task Finished"]}


class EventFile:
    """Routes the bus's completion events to ``path`` (``start``/``stop`` or ``with``)."""

    def __init__(
        self, endpoint_url: str, path: str | Path, *, bus: str = DEFAULT_BUS, name_prefix: str
    ) -> None:
        self.path = Path(path)
        self._endpoint_url = endpoint_url
        self._bus = bus or DEFAULT_BUS
        self._name = f"{name_prefix}-LocalEventFile"
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.queue_url = ""

    def start(self) -> Self:
        events, sqs = client("events", self._endpoint_url), client("sqs", self._endpoint_url)
        if self._bus != DEFAULT_BUS:
            names = [bus["Name"] for bus in events.list_event_buses().get("EventBuses", [])]
            if self._bus not in names:
                events.create_event_bus(Name=self._bus)
        self.queue_url = sqs.create_queue(QueueName=self._name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(
            Name=self._name, EventBusName=self._bus, EventPattern=json.dumps(EVENT_PATTERN), State="ENABLED"
        )
        events.put_targets(
            Rule=self._name, EventBusName=self._bus, Targets=[{"Id": "events-file", "Arn": arn}]
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="local-event-file", daemon=True)
        self._thread.start()
        log.info("completion events of bus %s go to %s", self._bus, self.path)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def drain(self, sqs: Any, wait_seconds: int = 0) -> int:
        """Append what the queue holds; returns how many events were written."""
        messages = sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        if not messages:
            return 0
        lines = []
        for message in messages:
            # moto's SQS target leaves the account out of the envelope; EventBridge's has it.
            event = {"account": LOCAL_ACCOUNT_ID, "region": LOCAL_REGION, **json.loads(message["Body"])}
            lines.append(json.dumps({key: event[key] for key in ENVELOPE_KEYS if key in event}) + "\n")
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.writelines(lines)
        sqs.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )
        return len(messages)

    def _run(self) -> None:
        sqs = client("sqs", self._endpoint_url)
        while not self._stopping.is_set():
            try:
                self.drain(sqs, wait_seconds=1)
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("reading the completion events failed; retrying")
                self._stopping.wait(1.0)
        # What arrived during the last long poll is written too.
        try:
            while self.drain(sqs):
                pass
        except Exception:
            log.warning("could not write the last completion events", exc_info=True)
