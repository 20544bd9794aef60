"""Harbor's Dragonfly provider (Harbor 2.1 to 2.11): GET /_ping, POST /preheats, GET /preheats/{id}."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.harbor import build_dragonfly1_resolver
from preheat.observability import logger, metrics, tracer

app = build_dragonfly1_resolver()


# Events carry credentials (the body's headers): never logged, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
