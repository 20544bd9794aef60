"""The SQS message format that carries a task from one step to the next."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from preheat.models.common import Credentials


class Step(StrEnum):
    START = "start"  # resolve the blobs, then dispatch them to the supernodes
    CHECK = "check"  # poll the supernodes for the dispatched blobs


@dataclass(frozen=True)
class WorkerMessage:
    """The SQS message body that carries a task from one step to the next.

    Only ``start`` carries the caller's credentials (SQS encrypts bodies at rest); ``check``
    messages need none, so credentials live no longer than the first step. A file URL whose
    signature or token parameters the task stores redacted travels whole in ``url`` the same way.
    """

    task_id: str
    step: Step
    seq: int = 0
    headers: Credentials = field(default_factory=Credentials)
    chain: str = ""  # a check's token, equal to the task's check_chain while it is the current one
    url: str = ""  # start only: the URL as the request gave it, when the task stores it redacted

    def to_json(self) -> str:
        body: dict[str, Any] = {"v": 1, "taskId": self.task_id, "step": self.step.value, "seq": self.seq}
        if self.chain:
            body["chain"] = self.chain
        if self.headers:
            body["header"] = self.headers.reveal()
        if self.url:
            body["url"] = self.url
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerMessage:
        try:
            body = json.loads(text)
            return cls(
                task_id=str(body["taskId"]),
                step=Step(body["step"]),
                seq=int(body.get("seq", 0)),
                headers=Credentials(body.get("header") or {}),
                chain=str(body.get("chain") or ""),
                url=str(body.get("url") or ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Never echo the body: it may hold credentials.
            raise ValueError(f"malformed worker message ({type(exc).__name__})") from None
