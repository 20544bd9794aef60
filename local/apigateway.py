"""API Gateway (REST API, Lambda proxy integration) in front of the template's ``Api`` events.

Requests are routed by the template's ``Path``/``Method``, turned into the same version 1.0 proxy event
API Gateway sends, and the handler's proxy response is written back the way API Gateway writes it,
including its own answers: 403 "Missing Authentication Token" for an unknown route and 502 "Internal
server error" when the function fails or answers something that is not a proxy response.

With an API key (``PREHEAT_API_KEY`` for ``make run``), every route wants it, as the deployed API does
with ``AuthMode=API_KEY``: presented as ``x-api-key``, ``Authorization: Bearer <key>`` or the password of
``Authorization: Basic``, found by the deployed authorizer's own code; none is 401 ``{"message":
"Unauthorized"}``, another key 403 ``{"message":"Forbidden"}``.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from local.aws import LOCAL_ACCOUNT_ID
from local.background import BackgroundServer, LocalHTTPServer
from local.template import ApiEvent, Resolver, Template

log = logging.getLogger("local.api")

Invoke = Callable[[str, Mapping[str, Any]], Any]
KeyExtractor = Callable[[Sequence[tuple[str, str]]], str | None]

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's request payload quota
INTEGRATION_TIMEOUT_SECONDS = 29  # API Gateway's default integration timeout
LOCAL_API_ID = "local"
_PROXY_RESPONSE_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})


@dataclass(frozen=True)
class Route:
    function: str  # logical id
    resource: str  # the template's Path, e.g. /api/preheat/{taskId}
    method: str  # upper case, or ANY
    stage: str
    pattern: re.Pattern[str]
    specificity: tuple[int, ...]  # per segment: 0 literal, 1 {param}, 2 {greedy+}; lower wins
    public: bool = False  # the template gives it no security whatever AuthMode says (the console page)

    @classmethod
    def create(cls, function: str, resource: str, method: str, stage: str, public: bool = False) -> Route:
        regex, ranks = "", []
        for segment in resource.strip("/").split("/") if resource.strip("/") else []:
            param = re.fullmatch(r"\{([^}+]+)(\+?)\}", segment)
            if param is None:
                regex += "/" + re.escape(segment)
                ranks.append(0)
            elif param.group(2):
                regex += f"/(?P<{param.group(1)}>.+)"
                ranks.append(2)
            else:
                regex += f"/(?P<{param.group(1)}>[^/]+)"
                ranks.append(1)
        return cls(
            function, resource, method.upper(), stage, re.compile((regex or "/") + "$"), tuple(ranks), public
        )

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


def routes_from_template(template: Template, resolver: Resolver) -> list[Route]:
    return [
        Route.create(
            spec.logical_id,
            event.path,
            event.method,
            template.api_stage(event, resolver),
            public=_always_open(template, event),
        )
        for spec in template.functions.values()
        for event in spec.api_events
    ]


def _always_open(template: Template, event: ApiEvent) -> bool:
    """Whether the API's DefinitionBody gives the route a literal empty ``security`` (not one that
    AuthMode chooses): such a route wants no key even when the local API does."""
    api = template.resources.get(event.rest_api_id or "") or {}
    paths = ((api.get("Properties") or {}).get("DefinitionBody") or {}).get("paths") or {}
    method = (paths.get(event.path) or {}).get(event.method.lower()) or {}
    return isinstance(method, dict) and method.get("security") == []


def find_route(routes: Sequence[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """API Gateway's choice: the most specific resource matching the path, then its method (or ANY)."""
    matching = [(route, params) for route in routes if (params := route.match(path)) is not None]
    if not matching:
        return None
    best = min(route.specificity for route, _ in matching)
    on_resource = [(route, params) for route, params in matching if route.specificity == best]
    for wanted in (method.upper(), "ANY"):
        for route, params in on_resource:
            if route.method == wanted:
                return route, params
    return None


def _single_and_multi(
    pairs: Sequence[tuple[str, str]],
) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    # API Gateway sends null, not {}, when there is nothing; the single-value map keeps the last value.
    if not pairs:
        return None, None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value
        multi.setdefault(key, []).append(value)
    return single, multi


def build_proxy_event(
    route: Route,
    *,
    method: str,
    path: str,
    path_parameters: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    body: bytes,
    source_ip: str,
    request_id: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The REST API proxy event (payload format 1.0) for one request."""
    now = time.time() if now is None else now
    header_map, multi_headers = _single_and_multi(headers)
    query_map, multi_query = _single_and_multi(query)
    host = next((v for k, v in headers if k.lower() == "host"), "127.0.0.1")
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
    text: str | None = None
    is_base64 = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # Without binaryMediaTypes API Gateway cannot pass arbitrary bytes as text either.
            text, is_base64 = base64.b64encode(body).decode("ascii"), True
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": method,
        "headers": header_map,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query_map,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": dict(path_parameters) or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": secrets.token_hex(3),
            "resourcePath": route.resource,
            "httpMethod": method,
            "extendedRequestId": secrets.token_urlsafe(12),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{route.stage}{path}",
            "accountId": LOCAL_ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": route.stage,
            "domainPrefix": host.split(".", 1)[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": user_agent,
                "user": None,
            },
            "domainName": host,
            "apiId": LOCAL_API_ID,
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


class MalformedProxyResponse(ValueError):
    """What API Gateway logs as "Malformed Lambda proxy response" (and answers with a 502)."""


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (dict, list)):
        raise MalformedProxyResponse(f"header value {value!r} is not a scalar")
    return str(value)


def parse_proxy_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes of a proxy response, with API Gateway's header merge."""
    if not isinstance(result, dict) or not set(result) <= _PROXY_RESPONSE_KEYS:
        raise MalformedProxyResponse(f"not a proxy response: {type(result).__name__}")
    try:
        status = int(result.get("statusCode", 200))
    except (TypeError, ValueError):
        raise MalformedProxyResponse(f"statusCode {result.get('statusCode')!r}") from None
    body = result.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedProxyResponse("body must be a string")
    payload = b""
    if body:
        payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    merged: list[tuple[str, str]] = []
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if not isinstance(values, list):
            raise MalformedProxyResponse(f"multiValueHeaders[{name!r}] is not a list")
        merged.extend((name, _header_value(v)) for v in values)
    # A pair given in both maps appears once (multiValueHeaders wins); any other value is added.
    for name, value in (result.get("headers") or {}).items():
        pair = (name, _header_value(value))
        if not any(n.lower() == name.lower() and v == pair[1] for n, v in merged):
            merged.append(pair)
    return status, merged, payload


def _gateway_error(status: int, message: str, error_type: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("x-amzn-ErrorType", error_type)], json.dumps({"message": message}).encode()


def layer_key_extractor() -> KeyExtractor:
    """The deployed authorizer's ``extract_api_key``, from the shared layer (on the path as Lambda
    puts it on /opt/python, see ``local``), so the local check takes keys exactly the way AWS does.
    Imported when first asked for: it brings powertools along."""
    from preheat.entrypoints.authorizer import extract_api_key  # noqa: PLC0415

    return extract_api_key


class _Server(LocalHTTPServer):
    def __init__(self, address: tuple[str, int], gateway: ApiGateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY every answer on a kept-alive connection waits for the client's delayed ACK
    # (about 40 ms a request).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "LocalApiGateway/1"
    timeout = 30  # idle keep-alive connections must not hold a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                total += size
                if total > MAX_PAYLOAD_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        split = urlsplit(self.path)
        path = unquote(split.path) or "/"
        if len(path) > 1:
            path = path.rstrip("/")
        body = self._read_body()
        gateway = self.server.gateway
        found = find_route(gateway.routes, self.command, path)
        function = "-"
        if body is None:
            self.close_connection = True
            status, headers, payload = _gateway_error(413, "Request Too Long", "RequestTooLongException")
        elif found is None:
            status, headers, payload = _gateway_error(
                403, "Missing Authentication Token", "MissingAuthenticationTokenException"
            )
        elif not found[0].public and (refusal := gateway.refusal(self.headers.items())) is not None:
            function = found[0].function
            status, headers, payload = refusal
        else:
            route, params = found
            function = route.function
            event = build_proxy_event(
                route,
                method=self.command,
                path=path,
                path_parameters=params,
                query=parse_qsl(split.query, keep_blank_values=True),
                headers=[*self.headers.items(), *self._forwarded_headers()],
                body=body,
                source_ip=self.client_address[0],
                request_id=request_id,
            )
            status, headers, payload = self._invoke(route.function, event, request_id, started)
        self._send(status, headers, payload, request_id)
        log.info(
            "request method=%s path=%s status=%d function=%s ms=%.1f requestId=%s",
            self.command,
            path,
            status,
            function,
            (time.monotonic() - started) * 1000,
            request_id,
        )

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        # Headers API Gateway adds to every proxied request.
        port = self.server.server_address[1]
        return [
            ("X-Forwarded-For", self.client_address[0]),
            ("X-Forwarded-Port", str(port)),
            ("X-Forwarded-Proto", "http"),
            ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"),
        ]

    def _invoke(
        self, function: str, event: dict[str, Any], request_id: str, started: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            result = self.server.gateway.invoke(function, event)
            if time.monotonic() - started > INTEGRATION_TIMEOUT_SECONDS:
                return _gateway_error(504, "Endpoint request timed out", "IntegrationTimeout")
            return parse_proxy_response(result)
        except Exception:
            # The event is not logged: its body and headers may carry registry credentials.
            log.exception("function=%s failed requestId=%s", function, request_id)
            return _gateway_error(502, "Internal server error", "InternalServerErrorException")

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes, request_id: str) -> None:
        self.send_response(status)
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
                self.send_header(name, value)
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")  # API Gateway's default
        self.send_header("x-amzn-RequestId", request_id)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class ApiGateway:
    """The local REST API on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        routes: Sequence[Route],
        invoke: Invoke,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        api_key: str | None = None,
    ) -> None:
        self.routes = list(routes)
        self.invoke = invoke
        self.api_key = api_key or None
        self._extract_key = layer_key_extractor() if self.api_key else None
        self._address = (host, port)
        self._server: _Server | None = None
        self._served: BackgroundServer | None = None

    def refusal(self, headers: Sequence[tuple[str, str]]) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """API Gateway's answer to a request without the API key (None: let it through)."""
        if self.api_key is None or self._extract_key is None:
            return None
        presented = self._extract_key(headers)
        if presented is None:
            return _gateway_error(401, "Unauthorized", "UnauthorizedException")
        if not hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return _gateway_error(403, "Forbidden", "ForbiddenException")
        return None

    def start(self) -> Self:
        if self._server is None:
            self._server = _Server(self._address, self)
            self._served = BackgroundServer(self._server, "local-api", poll_interval=0.1)
            log.info(
                "API listening on %s (%d routes%s)",
                self.url,
                len(self.routes),
                ", API key required" if self.api_key else "",
            )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None and self._served is not None:
            self._served.close()
            self._served = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the API is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
