"""GET /api/preheat/{taskId}/gate: may a rollout go on? Answered with HTTP status (200 or 412)."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.gate import build_resolver, gate_routes
from preheat.observability import logger, metrics, tracer

app = build_resolver(gate_routes())


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
