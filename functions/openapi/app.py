"""GET /api/openapi.json: the API's OpenAPI document, as the shared layer ships it
(``preheat/openapi.json``, written from ``docs/openapi.yaml`` by ``make openapi``)."""

from importlib.resources import files
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

# Read once per execution environment: the document is part of the deployed layer.
DOCUMENT = (files("preheat") / "openapi.json").read_text(encoding="utf-8")


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "Cache-Control": "max-age=300"},
        "body": DOCUMENT,
    }
