"""The local API Gateway: routing by the template, the proxy event it builds, the answers it writes."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
import requests

from local.apigateway import (
    MalformedProxyResponse,
    Route,
    build_proxy_event,
    find_route,
    parse_proxy_response,
)
from local.stack import LocalStack

pytestmark = pytest.mark.integration


def _echo(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_get_builds_the_rest_proxy_event(fixture_stack: LocalStack) -> None:
    response = requests.get(
        f"{fixture_stack.api_url}/items/a%20b",
        params=[("tag", "x"), ("tag", "y"), ("q", "1 2")],
        headers={"X-Custom": "v1", "Accept": "application/json"},
        timeout=10,
    )
    answer = _echo(response)
    event = answer["event"]
    assert event["resource"] == "/items/{itemId}"
    assert event["path"] == "/items/a b"
    assert event["httpMethod"] == "GET"
    assert event["pathParameters"] == {"itemId": "a b"}
    assert event["queryStringParameters"] == {"tag": "y", "q": "1 2"}
    assert event["multiValueQueryStringParameters"] == {"tag": ["x", "y"], "q": ["1 2"]}
    assert event["headers"]["X-Custom"] == "v1"
    assert event["multiValueHeaders"]["X-Custom"] == ["v1"]
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["stage"] == "test"  # the Api's StageName, from its parameter's default
    assert context["resourcePath"] == "/items/{itemId}"
    assert context["httpMethod"] == "GET"
    assert context["path"] == "/test/items/a b"
    assert context["protocol"] == "HTTP/1.1"
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert isinstance(context["requestTimeEpoch"], int)
    assert context["requestId"] == response.headers["x-amzn-RequestId"]


def test_event_validates_against_powertools_model(fixture_stack: LocalStack) -> None:
    models = pytest.importorskip("aws_lambda_powertools.utilities.parser.models")
    event = _echo(requests.post(f"{fixture_stack.api_url}/items", data='{"a": 1}', timeout=10))["event"]
    parsed = models.APIGatewayProxyEventModel.model_validate(event)
    assert parsed.body == '{"a": 1}'
    assert parsed.pathParameters is None
    assert parsed.queryStringParameters is None


def test_handler_gets_template_environment_context_and_layer(fixture_stack: LocalStack) -> None:
    answer = _echo(requests.get(f"{fixture_stack.api_url}/items/1", timeout=10))
    assert answer["layer"] == "from-the-fixture-layer"
    assert answer["env"]["GREETING"] == "hello"
    assert answer["env"]["QUEUE_URL"] == fixture_stack.queue_url("WorkQueue")
    assert answer["env"]["TABLE_NAME"] == fixture_stack.table_name("ItemsTable")
    assert answer["env"]["AWS_ENDPOINT_URL"] == fixture_stack.moto_url
    context = answer["context"]
    assert context["function_name"] == "preheat-local-EchoFunction"
    assert context["memory_limit_in_mb"] == "256"
    assert context["invoked_function_arn"].endswith(":function:preheat-local-EchoFunction")
    assert 0 < context["remaining_ms"] <= 10_000  # counts down from the template's Timeout


def test_response_headers_are_merged_like_api_gateway(fixture_stack: LocalStack) -> None:
    response = requests.get(f"{fixture_stack.api_url}/items/1", timeout=10)
    assert response.headers["X-Echo"] == "yes"
    cookies = [v for k, v in response.raw.headers.items() if k.lower() == "set-cookie"]
    assert cookies == ["a=1", "b=2", "c=3"]
    assert response.headers["Content-Type"] == "application/json"  # API Gateway's default


def test_post_body_text_and_binary(fixture_stack: LocalStack) -> None:
    event = _echo(requests.post(f"{fixture_stack.api_url}/items", data="héllo".encode(), timeout=10))["event"]
    assert (event["body"], event["isBase64Encoded"]) == ("héllo", False)
    event = _echo(requests.post(f"{fixture_stack.api_url}/items", data=b"\xff\x00", timeout=10))["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\x00"


def test_base64_response_body_is_decoded(fixture_stack: LocalStack) -> None:
    response = requests.get(f"{fixture_stack.api_url}/items/binary", timeout=10)
    assert response.status_code == 200
    assert response.content == b"\x00\xffbytes"
    assert response.headers["Content-Type"] == "application/octet-stream"


def test_literal_route_beats_parameter_and_greedy_path_matches(fixture_stack: LocalStack) -> None:
    special = requests.get(f"{fixture_stack.api_url}/items/special", timeout=10)
    assert special.json() == {"special": True, "resource": "/items/special"}
    event = _echo(requests.delete(f"{fixture_stack.api_url}/files/a/b/c.txt", timeout=10))["event"]
    assert event["resource"] == "/files/{path+}"
    assert event["pathParameters"] == {"path": "a/b/c.txt"}
    assert event["httpMethod"] == "DELETE"


@pytest.mark.parametrize(("method", "path"), [("GET", "/nowhere"), ("PUT", "/items/1"), ("GET", "/items")])
def test_unknown_route_is_missing_authentication_token(
    fixture_stack: LocalStack, method: str, path: str
) -> None:
    response = requests.request(method, fixture_stack.api_url + path, timeout=10)
    assert response.status_code == 403
    assert response.json() == {"message": "Missing Authentication Token"}
    assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"


def test_handler_exception_is_502_and_logged_without_the_body(
    fixture_stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="local.api"):
        response = requests.post(f"{fixture_stack.api_url}/boom", data='{"password": "s3cret"}', timeout=10)
    assert response.status_code == 502
    assert response.json() == {"message": "Internal server error"}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures
    assert "BoomFunction" in failures[0].getMessage()
    assert "boom" in caplog.text  # the traceback
    assert "s3cret" not in caplog.text


def test_malformed_proxy_response_is_502(fixture_stack: LocalStack) -> None:
    response = requests.get(f"{fixture_stack.api_url}/malformed", timeout=10)
    assert response.status_code == 502
    assert response.json() == {"message": "Internal server error"}


def test_invoke_runs_a_function_directly(fixture_stack: LocalStack) -> None:
    result = fixture_stack.invoke("SpecialFunction", {"resource": "/direct"})
    assert result == {"statusCode": 200, "body": json.dumps({"special": True, "resource": "/direct"})}
    with pytest.raises(RuntimeError, match="boom"):
        fixture_stack.invoke("BoomFunction", {})


# --- without a server -------------------------------------------------------------------------------


def _routes() -> list[Route]:
    return [
        Route.create("Param", "/a/{id}", "GET", "v1"),
        Route.create("Literal", "/a/b", "GET", "v1"),
        Route.create("Any", "/a/{id}", "ANY", "v1"),
        Route.create("Greedy", "/{proxy+}", "ANY", "v1"),
        Route.create("Root", "/", "GET", "v1"),
    ]


@pytest.mark.parametrize(
    ("method", "path", "function", "params"),
    [
        ("GET", "/a/b", "Literal", {}),
        ("GET", "/a/c", "Param", {"id": "c"}),
        ("POST", "/a/c", "Any", {"id": "c"}),
        ("GET", "/x/y/z", "Greedy", {"proxy": "x/y/z"}),
        ("GET", "/", "Root", {}),
    ],
)
def test_find_route_prefers_the_most_specific_resource(
    method: str, path: str, function: str, params: dict[str, str]
) -> None:
    found = find_route(_routes(), method, path)
    assert found is not None
    assert (found[0].function, found[1]) == (function, params)


def test_a_method_missing_on_the_chosen_resource_is_no_route() -> None:
    # /a/b exists (GET only): API Gateway does not fall back to /a/{id} for a POST.
    assert find_route(_routes()[:2], "POST", "/a/b") is None


def test_proxy_event_sends_null_for_absent_maps() -> None:
    route = Route.create("F", "/x", "GET", "v1")
    event = build_proxy_event(
        route,
        method="GET",
        path="/x",
        path_parameters={},
        query=[],
        headers=[],
        body=b"",
        source_ip="127.0.0.1",
        request_id="r",
        now=1.5,
    )
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] is None
    assert event["headers"] is None
    assert event["requestContext"]["requestTimeEpoch"] == 1500


@pytest.mark.parametrize(
    "result",
    [
        None,
        "text",
        {"statusCode": 200, "body": {"a": 1}},
        {"statusCode": "x"},
        {"statusCode": 200, "extra": 1},
    ],
)
def test_parse_proxy_response_refuses_what_api_gateway_refuses(result: Any) -> None:
    with pytest.raises(MalformedProxyResponse):
        parse_proxy_response(result)
