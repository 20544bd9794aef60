"""SQS dead-letter queue: end the task of every message the worker gave up on as FAIL."""

from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.queue import handle_dead_letters
from preheat.observability import logger, metrics, tracer


# Events carry credentials (the worker's message body): never logged, whatever
# POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return handle_dead_letters(event, context)
