"""GET /api/preheat/{taskId}/peers (verify) and DELETE /api/preheat/{taskId} (evict)."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.api import build_resolver
from preheat.entrypoints.lifecycle import lifecycle_routes
from preheat.observability import logger, metrics, tracer

app = build_resolver(lifecycle_routes())


# Events carry credentials (the body's header, the worker's message): never logged, whatever
# POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
