"""The API key, however the caller presents it: the Lambda REQUEST authorizer of ``AuthMode=API_KEY``.

API Gateway itself checks keys: the API's ``ApiKeySourceType`` is ``AUTHORIZER``, so the key this
authorizer returns as ``usageIdentifierKey`` is the one API Gateway looks up in the usage plan
(unknown or disabled: 403 ``{"message":"Forbidden"}``; over the plan's limits: 429). The authorizer
never knows the keys; it only finds the one the request carries, in any of the ways Harbor's
provider auth modes can send it:

* ``x-api-key: <key>`` (Harbor's custom header mode with the header ``x-api-key``; the CLI),
* ``Authorization: Bearer <key>`` (Harbor's OAuth/Bearer token mode),
* ``Authorization: Basic base64(<user>:<key>)`` (Harbor's Basic mode: the password is the key, the
  user name is free).

A request with none of them is refused with "Unauthorized", which API Gateway answers as 401
``{"message":"Unauthorized"}``. The local API Gateway stand-in (``local/apigateway.py``) uses
:func:`extract_api_key` too, so both take keys the same way.

Only the standard library here: the local stand-in imports this module without the layer's
dependencies, and the authorizer runs on every request, so its cold start stays small.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"
MAX_KEY_LENGTH = 1024  # API Gateway keys are 20 to 128 characters; anything far longer is not one

Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


class Unauthorized(Exception):
    """No key in the request: API Gateway answers 401 when an authorizer fails with "Unauthorized"."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def _header(headers: Headers, name: str) -> str | None:
    """The first non-empty value of header ``name`` (case-insensitive)."""
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if isinstance(key, str) and key.lower() == name and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _usable(key: str | None) -> str | None:
    if not key or len(key) > MAX_KEY_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in key):
        return None
    return key


def _from_authorization(value: str) -> str | None:
    scheme, _, credentials = value.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return _usable(credentials)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        _user, colon, password = decoded.partition(":")
        return _usable(password) if colon else None
    return None


def extract_api_key(headers: Headers) -> str | None:
    """The API key the request presents, or None. ``x-api-key`` wins over ``Authorization``."""
    direct = _header(headers, API_KEY_HEADER)
    if direct is not None:
        return _usable(direct)
    authorization = _header(headers, AUTHORIZATION_HEADER)
    return None if authorization is None else _from_authorization(authorization)


def key_fingerprint(key: str) -> str:
    """A name for the key in logs and ``$context.authorizer.principalId``: never the key itself."""
    return "apikey-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def api_wildcard(method_arn: str) -> str:
    """Every method of the stage ``method_arn`` belongs to: the policy is about the key, not the
    route (and stays right if API Gateway ever caches it for another route)."""
    # arn:aws:execute-api:<region>:<account>:<api-id>/<stage>/<METHOD>/<resource path>
    prefix, _, path = method_arn.partition("/")
    stage = path.split("/", 1)[0]
    if not prefix.startswith("arn:") or not stage:
        raise ValueError(f"not a method ARN: {method_arn[:200]!r}")
    return f"{prefix}/{stage}/*"


def authorize(event: Mapping[str, Any]) -> dict[str, Any]:
    """The authorizer's answer to a REQUEST event: Allow with the key as ``usageIdentifierKey``, or
    :class:`Unauthorized` when the request carries no key."""
    key = extract_api_key(event.get("headers"))
    if key is None:
        raise Unauthorized
    return {
        "principalId": key_fingerprint(key),
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow",
                    "Resource": api_wildcard(str(event.get("methodArn", ""))),
                }
            ],
        },
        "usageIdentifierKey": key,
    }
