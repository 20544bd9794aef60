"""Task events on EventBridge: one PutEvents entry per finished (or evicted) task, and per re-warm."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.events import (
    DETAIL_TYPE,
    EVICTED_DETAIL_TYPE,
    REWARMED_DETAIL_TYPE,
    SOURCE,
    evicted_detail,
    finished_detail,
    rewarmed_detail,
)
from preheat.models import Task
from preheat.settings import Settings


class EventBridgePublisher:
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._bus = settings.event_bus
        self._injected_client = client

    @functools.cached_property
    def _client(self) -> Any:
        return self._injected_client or aws.client("events")

    def task_finished(self, task: Task) -> None:
        self._put(DETAIL_TYPE, finished_detail(task), task.finished_at, "completion")

    def task_evicted(self, task: Task) -> None:
        self._put(EVICTED_DETAIL_TYPE, evicted_detail(task), task.evicted_at, "eviction")

    def task_rewarmed(self, task: Task, missing: Sequence[str], failed: Sequence[str] = ()) -> None:
        self._put(REWARMED_DETAIL_TYPE, rewarmed_detail(task, missing, failed), None, "re-warm")

    def _put(self, detail_type: str, detail: dict[str, Any], time: datetime | None, what: str) -> None:
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, separators=(",", ":")),
            "EventBusName": self._bus,
        }
        if time is not None:
            entry["Time"] = time
        try:
            answer = self._client.put_events(Entries=[entry])
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(f"could not put the {what} event: {aws.reason(exc)}") from None
        # PutEvents answers 200 even when an entry is refused (throttled, bus missing): say so.
        if answer.get("FailedEntryCount"):
            [failed] = answer.get("Entries") or [{}]
            raise DependencyFailure(f"could not put the {what} event: {failed.get('ErrorCode', 'refused')}")
