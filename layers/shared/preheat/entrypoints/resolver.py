"""What every HTTP entry point shares: reading a JSON body, submitting a preheat, and the one place
where domain errors become answers (each API gives its own error body).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from preheat import bootstrap
from preheat.errors import DependencyFailure, InvalidRequest, NotSupported, TaskNotFound
from preheat.jsontext import loads
from preheat.models import PreheatRequest, Task
from preheat.observability import logger, metrics

MAX_BODY_BYTES = 64 * 1024

ErrorBody = Callable[[int, str], Response[str]]


def build_resolver_with(router: Router, error: ErrorBody) -> APIGatewayRestResolver:
    """A resolver for ``router`` whose errors are answered by ``error(status, message)``."""
    app = APIGatewayRestResolver()
    app.include_router(router)

    @app.exception_handler(InvalidRequest)
    def invalid(exc: InvalidRequest) -> Response[str]:
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        return error(400, str(exc))

    @app.exception_handler(TaskNotFound)
    def not_found(exc: TaskNotFound) -> Response[str]:
        return error(404, str(exc))

    @app.exception_handler(NotSupported)
    def not_supported(exc: NotSupported) -> Response[str]:
        return error(501, str(exc))

    @app.exception_handler(DependencyFailure)
    def dependency(exc: DependencyFailure) -> Response[str]:
        logger.error("dependency failure", extra={"reason": str(exc)})
        metrics.add_metric(name="DependencyFailures", unit=MetricUnit.Count, value=1)
        return error(500, f"service unavailable, try again: {exc}")

    @app.exception_handler(Exception)
    def unexpected(exc: Exception) -> Response[str]:
        logger.exception("unexpected error")
        return error(500, "internal error; the request id in the logs has the details")

    @app.not_found
    def no_route(exc: Exception) -> Response[str]:
        event = app.current_event
        return error(404, f"no route for {event.http_method} {event.path}")

    return app


def submit(body: Any) -> Task:
    """Submit the preheat ``body`` asks for (a PreheatRequest body) through the domain service."""
    request = PreheatRequest.parse(body)
    task = bootstrap.preheat_service().submit(request)
    logger.append_keys(task_id=task.task_id)
    logger.info("preheat task submitted", extra={"type": task.type.value, "url": task.url})
    metrics.add_metric(name="TasksSubmitted", unit=MetricUnit.Count, value=1)
    return task


def json_body(event: BaseProxyEvent) -> Any:
    """The request's body decoded as JSON; InvalidRequest saying why when it cannot be."""
    try:
        raw = event.decoded_body
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not UTF-8 text: send a JSON object") from None
    return _json_text(raw)


def _json_text(raw: str | None) -> Any:
    if not raw:
        raise InvalidRequest('request body is empty: send a JSON object like {"type":"image","url":"..."}')
    if len(raw.encode()) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES // 1024} KiB")
    try:
        return loads(raw)
    except json.JSONDecodeError as exc:
        # The position helps the caller; the body itself may hold credentials and is not echoed.
        raise InvalidRequest(f"request body is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:
        # Nested deeper than the parser recurses (30,000 brackets fit in 64 KiB): a 400, not a crash.
        raise InvalidRequest(f"request body is not valid JSON ({exc})") from None
