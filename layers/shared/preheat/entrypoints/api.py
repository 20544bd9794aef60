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

from preheat import bootstrap
from preheat.entrypoints.resolver import build_resolver_with, json_body, submit
from preheat.observability import metrics, tracer
from preheat.service import unreachable_supernodes


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
        task = submit(json_body(router.current_event))
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


def _error(status: int, message: str) -> Response[str]:
    return envelope(status, msg=message)


def build_resolver(router: Router) -> APIGatewayRestResolver:
    return build_resolver_with(router, _error)
