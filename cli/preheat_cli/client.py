"""The Preheat API over HTTP: three calls, each answering the spec's ``{code, data, msg}`` envelope.

The API answers HTTP 200 with the outcome in ``code``, errors included. Anything else (no connection,
a body that is not an envelope, API Gateway's own 403/429/502 answers) is a :class:`ClientError`: the
service was not reached, as opposed to having said no.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

API_KEY_HEADER = "x-api-key"
# Connect quickly or say so; the API itself answers within API Gateway's 29 s integration limit.
REQUEST_TIMEOUT = (5.0, 35.0)


class ClientError(Exception):
    """The API gave no envelope; the message is one line, fit to show as it is."""


@dataclass(frozen=True)
class Envelope:
    """An answer of the API, kept verbatim in ``body`` so ``--json`` prints exactly what was said."""

    body: dict[str, Any]

    @property
    def code(self) -> int:
        code: int = self.body["code"]
        return code

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def msg(self) -> str:
        msg = self.body.get("msg")
        return msg if isinstance(msg, str) and msg else f"the API answered code {self.code}"


def display_url(url: str) -> str:
    """``url`` fit for messages: an endpoint may carry ``user:password@``, which is never shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class PreheatClient:
    """Calls the API at ``endpoint`` (its base URL, stage path included on API Gateway)."""

    def __init__(
        self, endpoint: str, api_key: str | None = None, session: requests.Session | None = None
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._session = session or requests.Session()
        # Proxies and netrc from the environment still apply; a stray REQUESTS_CA_BUNDLE does too.
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers[API_KEY_HEADER] = api_key

    def check(self) -> Envelope:
        return self._call("GET", "/api/check")

    def submit(
        self,
        preheat_type: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        platforms: Sequence[str] = (),
    ) -> Envelope:
        body: dict[str, Any] = {"type": preheat_type, "url": url}
        if headers:
            body["header"] = dict(headers)
        if platforms:
            body["platform"] = list(platforms)
        return self._call("POST", "/api/preheat", json=body)

    def status(self, task_id: str, detail: bool = False) -> Envelope:
        # Quoted whole: an id with '/' or '?' must not turn into another route or a query.
        path = f"/api/preheat/{quote(task_id, safe='')}"
        return self._call("GET", path, params={"detail": "true"} if detail else None)

    def peers(self, task_id: str) -> Envelope:
        """Verify: which peers hold the task's blobs now."""
        return self._call("GET", f"/api/preheat/{quote(task_id, safe='')}/peers")

    def evict(self, task_id: str) -> Envelope:
        """Evict: take the task's blobs out of the cluster."""
        return self._call("DELETE", f"/api/preheat/{quote(task_id, safe='')}")

    def list(
        self, status: str | None = None, type: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> Envelope:
        params: dict[str, str] = {"limit": str(limit)}
        for name, value in (("status", status), ("type", type), ("cursor", cursor)):
            if value:
                params[name] = value
        return self._call("GET", "/api/preheat", params=params)

    def _call(self, method: str, path: str, **kwargs: Any) -> Envelope:
        where = display_url(self.endpoint)
        try:
            response = self._session.request(
                method, self.endpoint + path, headers=self._headers, timeout=REQUEST_TIMEOUT, **kwargs
            )
        except requests.Timeout:
            raise ClientError(
                f"the Preheat API at {where} did not answer within {REQUEST_TIMEOUT[1]:g} s"
            ) from None
        except requests.ConnectionError as exc:
            raise ClientError(
                f"cannot reach the Preheat API at {where}: {_reason(exc)}"
                " (is it running? set --endpoint or PREHEAT_ENDPOINT)"
            ) from None
        except requests.RequestException as exc:
            # requests' own messages repeat the whole URL and urllib3's chain; the type says enough.
            raise ClientError(f"request to {where} failed: {type(exc).__name__}") from None
        return _envelope(response, f"{method} {where}{path}")


def _envelope(response: requests.Response, what: str) -> Envelope:
    try:
        body = response.json()
    except ValueError:  # requests' JSONDecodeError is one
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    # bool is an int to Python, but {"code": true} is no envelope.
    if isinstance(body, dict) and isinstance(code, int) and not isinstance(code, bool):
        return Envelope(body)
    # API Gateway answers on its own with {"message": ...}: a missing API key, an unknown stage or
    # route ("Missing Authentication Token"), throttling, a function that timed out.
    message = body.get("message") if isinstance(body, dict) else None
    reason = message if isinstance(message, str) and message else response.reason or "no reason given"
    hint = ""
    if response.status_code == 403:
        hint = " (check the --endpoint's stage path and the --api-key)"
    elif response.status_code == 200:
        reason = f"not a Preheat API answer ({response.headers.get('Content-Type', 'no content type')})"
    raise ClientError(f"{what}: HTTP {response.status_code} {reason}{hint}")


def _reason(exc: BaseException) -> str:
    """The innermost operating-system reason ("Connection refused", "Name or service not known").

    requests wraps it in urllib3's retry and connection errors, whose messages run to several
    hundred characters; the socket's own words are what the user can act on.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return str(current.strerror)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return "connection failed"
