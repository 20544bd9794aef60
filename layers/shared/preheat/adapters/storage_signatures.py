"""Storage-signature parameters: the query parameters that sign a storage URL, and the URL as it may
be stored, logged or shown (:func:`redact_url`).

A supernode leaves them out when it derives a task id (its ``filter``), so that two signatures of
one blob are one download. A signature, like a token in a query, is a credential: the URL handed to
the supernode keeps it, every other copy (the task item, the listing, status answers, events, logs,
quoted errors) shows ``REDACTED`` in its place. Pure data and string work, so the domain uses it too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_plus, urlsplit

# Query parameters that sign a storage URL, grouped by scheme: a group counts only when its marker
# is in the URL, so that short names (``sp``, ``se``) are not dropped from ordinary URLs. The
# supernode leaves these out when it derives the task id, so two signatures of one blob are one
# download. Names are compared ignoring case; prefixes are vendor headers hoisted into the query.
SIGNATURE_PARAM_GROUPS: dict[str, frozenset[str]] = {
    # S3 SigV2, CloudFront, GCS V2, Alibaba OSS V1, Huawei OBS V1.
    "signature": frozenset(
        [
            "signature",
            "expires",
            "policy",
            "key-pair-id",
            "awsaccesskeyid",
            "googleaccessid",
            "ossaccesskeyid",
            "accesskeyid",
            "security-token",
        ]
    ),
    # Azure Blob SAS (GHCR's pkg-containers, ACR).
    "sig": frozenset(
        [
            "sig",
            "se",
            "st",
            "sp",
            "sv",
            "sr",
            "spr",
            "sip",
            "si",
            "ss",
            "srt",
            "sdd",
            "skoid",
            "sktid",
            "skt",
            "ske",
            "sks",
            "skv",
            "ses",
        ]
    ),
    # Tencent COS.
    "q-signature": frozenset(
        [
            "q-sign-algorithm",
            "q-ak",
            "q-sign-time",
            "q-key-time",
            "q-header-list",
            "q-url-param-list",
            "q-signature",
        ]
    ),
    # Docker Hub's Cloudflare storage: ``verify=<expiry>-<signature>``.
    "verify": frozenset({"verify"}),
}
SIGNATURE_PARAM_PREFIXES = ("x-amz-", "x-goog-", "x-oss-", "x-obs-")


def signature_params(url: str) -> tuple[str, ...]:
    """The names of the signature query parameters in ``url``, as spelled there, in order."""
    names: list[str] = []
    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in names:
            names.append(name)
    present = {name.lower() for name in names}
    signing = {
        member
        for marker, members in SIGNATURE_PARAM_GROUPS.items()
        if marker in present
        for member in members
    }
    return tuple(
        name for name in names if name.lower() in signing or name.lower().startswith(SIGNATURE_PARAM_PREFIXES)
    )


# What stands in a URL for a value that is a credential.
REDACTED_VALUE = "REDACTED"
# Query parameters that carry a credential whatever the URL (OAuth, CDN tokens, API keys) ...
TOKEN_PARAM_NAMES = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "code",
        "hdnea",
        "hdnts",
        "jwt",
        "key",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "token",
        "verify",
    }
)
# ... and any whose name holds one of these words.
TOKEN_PARAM_WORDS = ("token", "signature", "secret", "password", "credential", "session")
_URL_IN_TEXT_RE = re.compile(r"https?://[^\s\"'<>`]+", re.IGNORECASE)


def _is_secret(name: str, signing: set[str]) -> bool:
    lowered = unquote_plus(name).lower()
    return (
        lowered in signing
        or lowered in TOKEN_PARAM_NAMES
        or lowered.startswith(SIGNATURE_PARAM_PREFIXES)
        or any(word in lowered for word in TOKEN_PARAM_WORDS)
    )


def redact_url(url: str) -> str:
    """``url`` with the value of every signature or token query parameter replaced by ``REDACTED``
    (names, order and every other parameter kept, so that an operator still sees what was signed).
    Over-redacting a harmless parameter costs a display; this is never the URL handed over."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sign, fragment = query.partition("#")
    signing = {name.lower() for name in signature_params(url)}
    pieces = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        pieces.append(f"{name}={REDACTED_VALUE}" if equals and value and _is_secret(name, signing) else piece)
    return f"{base}?{'&'.join(pieces)}{hash_sign}{fragment}"


def redact_urls_in(text: str) -> str:
    """``text`` (a server's error, a message) with every http(s) URL in it redacted."""
    return _URL_IN_TEXT_RE.sub(lambda match: redact_url(match.group(0)), text)
