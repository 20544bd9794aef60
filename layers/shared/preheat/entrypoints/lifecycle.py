"""The lifecycle routes: verify (``GET /api/preheat/{taskId}/peers``) and evict
(``DELETE /api/preheat/{taskId}``), in the spec's envelope like every other route.

Thin: the task is read as the status route reads it (an unknown or malformed id answers 404/400),
then ``LifecycleService`` does the work. A target kind that cannot do what is asked answers 501
(NotSupported), naming what would.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit

from preheat import bootstrap
from preheat.entrypoints.api import envelope
from preheat.lifecycle import eviction_answer
from preheat.observability import metrics, tracer


def lifecycle_routes() -> Router:
    router = Router()

    @router.get("/api/preheat/<task_id>/peers")
    @tracer.capture_method(capture_response=False)
    def peers(task_id: str) -> Response[str]:
        task = bootstrap.preheat_service().get(task_id)
        seen = bootstrap.lifecycle_service().verify(task)
        if seen.unreachable:
            metrics.add_metric(
                name="VerifyTargetsUnreachable", unit=MetricUnit.Count, value=len(seen.unreachable)
            )
        return envelope(200, data=seen.to_api())

    @router.delete("/api/preheat/<task_id>")
    @tracer.capture_method(capture_response=False)
    def evict(task_id: str) -> Response[str]:
        task = bootstrap.preheat_service().get(task_id)
        evicted = bootstrap.lifecycle_service().evict(task)
        if task.evicted_at is None:
            metrics.add_metric(name="TasksEvicted", unit=MetricUnit.Count, value=1)
        return envelope(200, data=eviction_answer(evicted))

    return router
