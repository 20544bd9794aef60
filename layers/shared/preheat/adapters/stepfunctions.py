"""Step Functions callbacks: the answer to a ``.waitForTaskToken`` state, once per task."""

from __future__ import annotations

import functools
import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import DependencyFailure
from preheat.models.keepwarm import TaskToken

# Step Functions' bounds (SendTaskFailure: error 256, cause 32768 characters; output 256 KiB).
MAX_ERROR_CHARS = 256
MAX_CAUSE_CHARS = 32768
# The execution no longer waits for this token (it ended, timed out, or the token was never one):
# answering again cannot help, so the token is forgotten.
GONE = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken", "InvalidOutput"})


class StepFunctionsCallbacks:
    def __init__(self, client: Any = None) -> None:
        self._injected_client = client

    @functools.cached_property
    def _client(self) -> Any:
        return self._injected_client or aws.client("stepfunctions")

    def succeed(self, token: TaskToken, output: dict[str, Any]) -> bool:
        """SendTaskSuccess; False when the execution no longer waits for ``token``."""
        return self._send("send_task_success", taskToken=token.value, output=json.dumps(output))

    def fail(self, token: TaskToken, error: str, cause: str) -> bool:
        """SendTaskFailure; False when the execution no longer waits for ``token``."""
        return self._send(
            "send_task_failure",
            taskToken=token.value,
            error=error[:MAX_ERROR_CHARS],
            cause=cause[:MAX_CAUSE_CHARS],
        )

    def _send(self, operation: str, **arguments: str) -> bool:
        try:
            getattr(self._client, operation)(**arguments)
        except ClientError as exc:
            if aws.reason(exc) in GONE:
                return False
            # The reason is the error's code only: its message may quote the token.
            raise DependencyFailure(f"could not answer the Step Functions task: {aws.reason(exc)}") from None
        except BotoCoreError as exc:
            raise DependencyFailure(f"could not answer the Step Functions task: {aws.reason(exc)}") from None
        return True
