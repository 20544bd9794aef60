"""The spec's API on API Gateway: routes, the ``{code, data, msg}`` envelope, and the one place
where domain errors become answers.

Every answer is HTTP 200 with a JSON body, errors included, exactly as the spec says; the outcome
is in ``code``.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from preheat import bootstrap
from preheat.entrypoints.observability import logger, metrics, tracer
from preheat.errors import DependencyFailure, InvalidRequest, TaskNotFound
from preheat.models import PreheatRequest
from preheat.service import unreachable_supernodes

MAX_BODY_BYTES = 64 * 1024


def envelope(code: int, data: dict[str, Any] | None = None, msg: str | None = None) -> Response[str]:
    body: dict[str, Any] = {"code": code}
    if data is not None:
        body["data"] = data
    if msg is not None:
        body["msg"] = msg
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


# Each handler builds its resolver from a fresh router: a router remembers the last resolver that
# included it (its current_event comes from there), so two resolvers must never share one.


def check_routes() -> Router:
    router = Router()

    @router.get("/api/check")
    @tracer.capture_method(capture_response=False)
    def check() -> Response[str]:
        failures = unreachable_supernodes(bootstrap.supernode_driver())
        if failures:
            metrics.add_metric(name="SupernodesUnreachable", unit=MetricUnit.Count, value=len(failures))
            names = "; ".join(f"{target}: {reason}" for target, reason in failures.items())
            return envelope(503, msg=f"cannot reach {len(failures)} supernode(s): {names}")
        return envelope(200)

    return router


def preheat_routes() -> Router:
    router = Router()

    @router.post("/api/preheat")
    @tracer.capture_method(capture_response=False)
    def preheat() -> Response[str]:
        request = PreheatRequest.parse(json_body(router.current_event))
        task = bootstrap.preheat_service().submit(request)
        logger.append_keys(task_id=task.task_id)
        logger.info("preheat task submitted", extra={"type": task.type.value, "url": task.url})
        metrics.add_metric(name="TasksSubmitted", unit=MetricUnit.Count, value=1)
        return envelope(200, data={"taskId": task.task_id})

    return router


def status_routes() -> Router:
    router = Router()

    @router.get("/api/preheat/<task_id>")
    @tracer.capture_method(capture_response=False)
    def status(task_id: str) -> Response[str]:
        task = bootstrap.preheat_service().get(task_id)
        detail = router.current_event.get_query_string_value("detail", "false") or "false"
        return envelope(200, data=task.to_api(detail=detail.lower() in ("true", "1", "yes")))

    @router.get("/api/preheat")
    @tracer.capture_method(capture_response=False)
    def listing() -> Response[str]:
        query = router.current_event.query_string_parameters or {}
        tasks, following = bootstrap.preheat_service().list_tasks(
            status=query.get("status"),
            type=query.get("type"),
            limit=query.get("limit"),
            cursor=query.get("cursor"),
        )
        return envelope(200, data={"tasks": [task.to_api() for task in tasks], "next": following})

    return router


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
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        # The position helps the caller; the body itself may hold credentials and is not echoed.
        raise InvalidRequest(f"request body is not valid JSON ({exc.msg} at character {exc.pos})") from None


def build_resolver(router: Router) -> APIGatewayRestResolver:
    app = APIGatewayRestResolver()
    app.include_router(router)

    @app.exception_handler(InvalidRequest)
    def invalid(exc: InvalidRequest) -> Response[str]:
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        return envelope(400, msg=str(exc))

    @app.exception_handler(TaskNotFound)
    def not_found(exc: TaskNotFound) -> Response[str]:
        return envelope(404, msg=str(exc))

    @app.exception_handler(DependencyFailure)
    def dependency(exc: DependencyFailure) -> Response[str]:
        logger.error("dependency failure", extra={"reason": str(exc)})
        metrics.add_metric(name="DependencyFailures", unit=MetricUnit.Count, value=1)
        return envelope(500, msg=f"service unavailable, try again: {exc}")

    @app.exception_handler(Exception)
    def unexpected(exc: Exception) -> Response[str]:
        logger.exception("unexpected error")
        return envelope(500, msg="internal error; the request id in the logs has the details")

    @app.not_found
    def no_route(exc: Exception) -> Response[str]:
        event = app.current_event
        return envelope(404, msg=f"no route for {event.http_method} {event.path}")

    return app
