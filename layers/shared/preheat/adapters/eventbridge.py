"""Events on EventBridge: one PutEvents entry per finished task, and per keep-warm re-warm."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.events import DETAIL_TYPE, REWARMED_DETAIL_TYPE, SOURCE, finished_detail, rewarmed_detail
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
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": DETAIL_TYPE,
            "Detail": json.dumps(finished_detail(task), separators=(",", ":")),
            "EventBusName": self._bus,
        }
        if task.finished_at is not None:
            entry["Time"] = task.finished_at
        self._put(entry)

    def task_rewarmed(self, task: Task, missing: Sequence[str], failed: Sequence[str] = ()) -> None:
        self._put(
            {
                "Source": SOURCE,
                "DetailType": REWARMED_DETAIL_TYPE,
                "Detail": json.dumps(rewarmed_detail(task, missing, failed), separators=(",", ":")),
                "EventBusName": self._bus,
            }
        )

    def _put(self, entry: dict[str, Any]) -> None:
        try:
            answer = self._client.put_events(Entries=[entry])
        except (ClientError, BotoCoreError) as exc:
            raise DependencyFailure(
                f"could not put the {entry['DetailType']} event: {aws.reason(exc)}"
            ) from None
        # PutEvents answers 200 even when an entry is refused (throttled, bus missing): say so.
        if answer.get("FailedEntryCount"):
            [failed] = answer.get("Entries") or [{}]
            raise DependencyFailure(
                f"could not put the {entry['DetailType']} event: {failed.get('ErrorCode', 'refused')}"
            )
