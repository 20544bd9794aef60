"""EventBridge: scheduled preheats (EventBridge Scheduler's input) and preheat on ECR push."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.events import handle_event
from preheat.observability import logger, metrics, tracer


# Schedule inputs may carry registry credentials (an entry's header): never logged, whatever
# POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return handle_event(event)
