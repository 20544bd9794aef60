"""GET /api/openapi.json: the API's OpenAPI document, as the shared layer ships it
(``preheat/openapi.json``, written from ``docs/openapi.yaml`` by ``make openapi``)."""

from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

import preheat

# Read once per execution environment: the document is part of the deployed layer (a plain path:
# importlib.resources would add some 20 ms of imports to every cold start).
DOCUMENT = (Path(preheat.__file__).parent / "openapi.json").read_text(encoding="utf-8")


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "Cache-Control": "max-age=300"},
        "body": DOCUMENT,
    }
