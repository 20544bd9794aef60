"""The layer's static documents: GET /api/openapi.json, the API's OpenAPI document
(``preheat/openapi.json``, written from ``docs/openapi.yaml`` by ``make openapi``), and GET /console,
the operator's page (``preheat/console/index.html``: plain HTML, CSS and JavaScript)."""

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

import preheat

# Read once per execution environment: the documents are part of the deployed layer (a plain path:
# importlib.resources would add some 20 ms of imports to every cold start).
_LAYER = Path(preheat.__file__).parent
DOCUMENT = (_LAYER / "openapi.json").read_text(encoding="utf-8")
CONSOLE = (_LAYER / "console" / "index.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    """CSP sources allowing exactly the page's own inline ``tag`` blocks."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", CONSOLE, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'" for block in blocks
    )


# The page runs its own script and style only, talks to its own origin only, and cannot be framed.
CONSOLE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("resource") == "/console":
        return {"statusCode": 200, "headers": CONSOLE_HEADERS, "body": CONSOLE}
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "Cache-Control": "max-age=300"},
        "body": DOCUMENT,
    }
