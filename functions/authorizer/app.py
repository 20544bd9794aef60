"""API Gateway Lambda REQUEST authorizer (AuthMode=API_KEY): finds the API key the request carries
(``x-api-key``, ``Authorization: Bearer`` or the password of ``Authorization: Basic``) and hands it
to API Gateway as ``usageIdentifierKey``; API Gateway checks it against the usage plan."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from preheat.entrypoints.authorizer import Unauthorized, authorize
from preheat.observability import logger


# The event's headers carry the key (and maybe registry credentials): never logged.
@logger.inject_lambda_context(clear_state=True, log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        answer = authorize(event)
    except Unauthorized:
        # API Gateway answers 401 {"message":"Unauthorized"} for exactly this error message.
        logger.info("no API key in the request", extra={"methodArn": event.get("methodArn")})
        raise
    logger.debug("API key presented", extra={"principalId": answer["principalId"]})
    return answer
