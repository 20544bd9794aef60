"""Which completion events the project's own code put: a probe of the botocore session its adapters
build their clients from, for the tests and benchmarks that must know when a task's last AWS call
was made (the completion event is the last thing a worker does), rather than wait a while."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any


class CompletionEvents:
    """botocore hooks noting each completion event the project's code put (``register`` them on its
    session): waiting for a task's event waits for the last call its worker makes, not for a while.

    A task counts as announced once EventBridge accepted its PutEvents: every hook of that call (its
    ``before-send`` among them) has run by then."""

    def __init__(self) -> None:
        self._statuses: dict[str, str] = {}
        self._announced = threading.Condition()

    def register(self, session: Any) -> None:
        session.register("before-parameter-build", self._on_parameters)
        session.register("after-call", self._on_answer)

    def unregister(self, session: Any) -> None:
        session.unregister("before-parameter-build", self._on_parameters)
        session.unregister("after-call", self._on_answer)

    @staticmethod
    def _is_put_events(model: Any) -> bool:
        return bool(model.service_model.service_name == "events" and model.name == "PutEvents")

    def _on_parameters(
        self, model: Any, params: Mapping[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        if self._is_put_events(model):
            context["completion_events"] = [
                json.loads(entry["Detail"]) for entry in params.get("Entries", [])
            ]

    def _on_answer(self, model: Any, parsed: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        if not self._is_put_events(model) or parsed.get("FailedEntryCount"):
            return
        with self._announced:
            for detail in context.get("completion_events", ()):
                self._statuses[detail["taskId"]] = detail["status"]
            self._announced.notify_all()

    def wait(self, task_id: str, timeout: float = 60.0) -> str:
        """The status ``task_id``'s completion event announced, once it was put."""
        with self._announced:
            if not self._announced.wait_for(lambda: task_id in self._statuses, timeout):
                raise RuntimeError(f"no completion event for task {task_id} within {timeout:g} s")
            return self._statuses[task_id]
