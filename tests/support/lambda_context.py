"""The Lambda context a handler is invoked with, for tests that invoke handlers in-process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LambdaContext:
    """What powertools reads from a Lambda context: names, memory, the request id, the time left."""

    function_name: str = "test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test"
    aws_request_id: str = "req-1"
    remaining_millis: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis
