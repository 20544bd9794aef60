"""Quoting an outside server safely: what its answers and our failures may say in a message.

Text a registry, supernode or manager answers with may echo a request's credentials, and an
exception's text quotes the URL it was raised for (signature included). Every adapter quotes such
text through here: secrets are replaced before the text is cut (a cut could leave half a secret that
no longer matches), and a failed request is described by its kind, never by its exception's text.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable

from preheat.adapters.http import ConnectionFailed, RequestError, Timeout
from preheat.adapters.storage_signatures import redact_urls_in

REDACTED = "<redacted>"
# A value of a character or three is no credential, and replacing it would garble the text.
MIN_SECRET_CHARS = 4
MAX_QUOTED_CHARS = 300

_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)")
# A credential after its scheme, whoever's it is: token characters, at least one of them not a
# lowercase letter (so that "basic authentication required" stays as it is).
_AUTH_VALUE_RE = re.compile(
    r"\b([Bb]earer|[Bb]asic|BEARER|BASIC)(\s+)(?=[A-Za-z0-9._~+/=-]*[0-9A-Z._~+/=-])[A-Za-z0-9._~+/=-]{8,}"
)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of at least MIN_SECRET_CHARS replaced, the longest first (so that
    a secret holding another is replaced whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, REDACTED)
    return text


def truncate(text: str, limit: int = MAX_QUOTED_CHARS, *, keep_end: bool = False) -> str:
    """At most ``limit`` characters and an ellipsis; with ``keep_end`` the cut is near the start,
    keeping the last three quarters (Go errors wrap their root cause at the end)."""
    if len(text) <= limit:
        return text
    if not keep_end:
        return f"{text[:limit]}..."
    head = limit // 4
    return f"{text[:head]}...{text[-(limit - head) :]}"


def secrets_of(values: Iterable[str]) -> list[str]:
    """The values to scrub from quoted text: each header value, each of its words, and what a
    Basic header encodes (a server could echo the user name or password)."""
    secrets: list[str] = []
    for value in values:
        candidates = [value, *value.split()]
        scheme, _, encoded = value.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                decoded = ""
            candidates += [decoded, *decoded.split(":", 1)]
        for candidate in candidates:
            if len(candidate) >= MIN_SECRET_CHARS and candidate.lower() not in ("basic", "bearer"):
                secrets.append(candidate)
    return secrets


def scrub_server_text(text: str, values: Iterable[str]) -> str:
    """Text a supernode or manager answered with, fit to quote (before any cut): every form of the
    credential ``values`` (header values, tokens: raw, each word, a Basic header's user and password;
    see :func:`secrets_of`), any Bearer or Basic credential or JWT it holds whoever's it is, and every
    URL's signature and token parameters."""
    text = scrub(text, secrets_of(values))
    text = _AUTH_VALUE_RE.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)
    return redact_urls_in(_JWT_RE.sub(REDACTED, text))


def failure_reason(
    exc: RequestError, timeout: float | str, scrub_text: Callable[[str], str] | None = None
) -> str:
    """A short reason built from the exception's type, never its whole text (which quotes the
    request's URL). A connection failure is named by its kind (refused, host not found), or, given
    ``scrub_text``, by the system's own words for it, scrubbed."""
    if isinstance(exc, Timeout):
        return f"timed out after {timeout}s"
    if isinstance(exc, ConnectionFailed):
        if scrub_text is not None:
            match = _ERRNO_RE.search(str(exc))
            detail = f" ({scrub_text(match.group(1).strip())})" if match else ""
            return f"connection failed{detail}"
        cause = repr(exc).lower()
        if "refused" in cause:
            return "connection refused"
        if "name or service not known" in cause or "nodename nor servname" in cause or "resolution" in cause:
            return "host not found"
        return "connection failed"
    return f"request failed ({type(exc).__name__})"
