"""GET /api/preheat/{taskId}/gate: the rollout gate, answered with HTTP status.

Unlike the spec's API (HTTP 200 and an envelope whatever happens), this route's status is the
answer, since rollout tools read nothing else: 200 open, 412 not yet (with the reason as JSON), 404
unknown task, 400 bad ``minPeers``, 500 when the service could not ask. The body is JSON either way:
``{"ready": bool, "reason": str, "taskId", "status", "layersWarm", "layersTotal", ...}``.
"""

from __future__ import annotations

import json

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit

from preheat import bootstrap
from preheat.entrypoints.resolver import build_resolver_with
from preheat.observability import metrics, tracer

NOT_READY = 412


def _answer(status: int, body: dict[str, object]) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


def gate_routes() -> Router:
    router = Router()

    # POST too: Flagger's webhooks POST a JSON body of their own (ignored here) and read the status.
    @router.route("/api/preheat/<task_id>/gate", method=["GET", "POST"])
    @tracer.capture_method(capture_response=False)
    def gate(task_id: str) -> Response[str]:
        min_peers = router.current_event.get_query_string_value("minPeers")
        answer = bootstrap.gate().judge(task_id, min_peers)
        metrics.add_metric(name="GateOpen" if answer.open else "GateClosed", unit=MetricUnit.Count, value=1)
        return _answer(200 if answer.open else NOT_READY, answer.to_json())

    return router


def _error(status: int, message: str) -> Response[str]:
    return _answer(status, {"ready": False, "reason": message})


def build_resolver(router: Router) -> APIGatewayRestResolver:
    return build_resolver_with(router, _error)
