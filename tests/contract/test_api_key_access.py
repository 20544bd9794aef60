"""AuthMode=API_KEY: the authorizer takes the key every way Harbor can send it, and the local API
Gateway stand-in (PREHEAT_API_KEY) refuses what API Gateway refuses, with the same answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.apigateway import ApiGateway, Route
from local.stack import stack_from_environ
from preheat.entrypoints.authorizer import (
    Unauthorized,
    api_wildcard,
    authorize,
    extract_api_key,
    key_fingerprint,
)
from tests.support.lambda_context import LambdaContext

KEY = "k3yOfTheUsagePlan0123456789abcdefABCDEF"
ROOT = Path(__file__).resolve().parents[2]
METHOD_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/v1/GET/api/preheat/5f0c6b7e"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the key, however Harbor sends it ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ({"x-api-key": KEY}, "custom header x-api-key (and the preheat CLI)"),
        ({"X-API-Key": f"  {KEY} "}, "header names are case-insensitive, values trimmed"),
        ({"Authorization": f"Bearer {KEY}"}, "Harbor OAuth: a Bearer token"),
        ({"authorization": f"bearer {KEY}"}, "scheme names are case-insensitive"),
        ({"Authorization": basic("harbor", KEY)}, "Harbor Basic: the password is the key"),
        ({"Authorization": basic("", KEY)}, "Basic with an empty user name"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_key_is_found_in_every_way_harbor_sends_it(headers: dict[str, str], mode: str):
    assert extract_api_key(headers) == KEY, mode
    assert extract_api_key(list(headers.items())) == KEY, mode


def test_basic_user_names_end_at_the_first_colon_rfc_7617():
    assert extract_api_key({"Authorization": basic("harbor", "a:" + KEY)}) == "a:" + KEY


def test_x_api_key_wins_over_authorization():
    assert extract_api_key({"Authorization": f"Bearer other-{KEY}", "x-api-key": KEY}) == KEY


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"x-api-key": ""},
        {"x-api-key": "   "},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": basic("harbor", "")},
        {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()},  # no colon: no password
        {"Authorization": "Basic not*base64"},
        {"Authorization": "Basic " + base64.b64encode(b"u:\xff\xfe").decode()},  # not UTF-8
        {"Authorization": f"Token {KEY}"},
        {"Authorization": f"AWS4-HMAC-SHA256 Credential={KEY}"},
        {"Authorization": f"Bearer {KEY} extra"},  # a space is no part of any key
        {"x-api-key": "a\x00b"},
        {"x-api-key": "k" * 1025},
        {"x-api-keys": KEY},
    ],
)
def test_no_usable_key_is_none(headers: Any):
    assert extract_api_key(headers) is None


def test_the_authorizer_allows_the_stage_and_hands_the_key_to_api_gateway():
    answer = authorize({"type": "REQUEST", "methodArn": METHOD_ARN, "headers": {"x-api-key": KEY}})
    assert answer["usageIdentifierKey"] == KEY
    assert answer["policyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Action": "execute-api:Invoke",
                "Effect": "Allow",
                "Resource": "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/v1/*",
            }
        ],
    }
    # The principal shows in access logs: it names the key without revealing it.
    assert answer["principalId"] == key_fingerprint(KEY)
    assert KEY not in answer["principalId"]
    assert key_fingerprint(KEY) != key_fingerprint(KEY + "x")


def test_no_key_fails_with_exactly_unauthorized_which_api_gateway_answers_401():
    with pytest.raises(Unauthorized) as raised:
        authorize({"type": "REQUEST", "methodArn": METHOD_ARN, "headers": {"Accept": "*/*"}})
    assert str(raised.value) == "Unauthorized"
    with pytest.raises(Unauthorized):
        authorize({"type": "REQUEST", "methodArn": METHOD_ARN, "headers": None})


@pytest.mark.parametrize("arn", ["", "not-an-arn", "arn:aws:execute-api:r:1:api"])
def test_a_malformed_method_arn_is_refused(arn: str):
    with pytest.raises(ValueError, match="not a method ARN"):
        api_wildcard(arn)


def test_the_authorizer_handler_answers_the_sample_event_and_never_logs_the_key(
    capsys: pytest.CaptureFixture[str],
):
    from local.lambda_runtime import load_handler
    from local.template import Template

    template = Template.load(ROOT / "template.yaml")
    spec = template.functions["ApiKeyAuthorizerFunction"]
    handler = load_handler(spec, template.layer_dirs(spec))
    event = json.loads((ROOT / "events" / "authorizer-request.json").read_text())
    key = extract_api_key(event["headers"])
    assert key is not None

    context = LambdaContext(
        function_name="ApiKeyAuthorizerFunction",
        memory_limit_in_mb=128,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:authorizer",
    )
    answer = handler(event, context)
    assert answer["usageIdentifierKey"] == key
    with pytest.raises(Unauthorized):
        handler(dict(event, headers={"Accept": "*/*"}, multiValueHeaders={}), context)
    output = capsys.readouterr()
    assert key not in output.out + output.err


# -- the local API Gateway stand-in ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[ApiGateway]:
    calls: list[str] = []

    def invoke(function: str, event: Any) -> dict[str, Any]:
        calls.append(function)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"code":200}'}

    routes = [Route.create("CheckFunction", "/api/check", "GET", "v1")]
    with ApiGateway(routes, invoke, port=0, api_key=KEY) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": KEY},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": basic("harbor", KEY)},
    ],
    ids=["x-api-key", "bearer", "basic"],
)
def test_local_gateway_lets_the_key_through_every_way(gateway: ApiGateway, headers: dict[str, str]):
    answer = requests.get(f"{gateway.url}/api/check", headers=headers, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"code": 200}


@pytest.mark.parametrize(
    ("headers", "status", "message", "error_type"),
    [
        ({}, 401, "Unauthorized", "UnauthorizedException"),
        ({"Authorization": "Bearer "}, 401, "Unauthorized", "UnauthorizedException"),
        ({"x-api-key": KEY + "x"}, 403, "Forbidden", "ForbiddenException"),
        ({"Authorization": basic(KEY, "wrong")}, 403, "Forbidden", "ForbiddenException"),
    ],
    ids=["none", "empty-bearer", "other-key", "key-as-user-name"],
)
def test_local_gateway_refuses_like_api_gateway(
    gateway: ApiGateway, headers: dict[str, str], status: int, message: str, error_type: str
):
    answer = requests.get(f"{gateway.url}/api/check", headers=headers, timeout=10)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["x-amzn-ErrorType"] == error_type
    assert answer.json() == {"message": message}


def test_an_unknown_route_is_missing_authentication_token_before_any_key_check(gateway: ApiGateway):
    answer = requests.get(f"{gateway.url}/api/nothing", timeout=10)
    assert answer.status_code == 403
    assert answer.json() == {"message": "Missing Authentication Token"}


def test_without_a_key_the_local_gateway_is_open():
    routes = [Route.create("CheckFunction", "/api/check", "GET", "v1")]

    def invoke(function: str, event: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": '{"code":200}'}

    with ApiGateway(routes, invoke, port=0) as running:
        assert requests.get(f"{running.url}/api/check", timeout=10).status_code == 200


def test_preheat_api_key_turns_the_check_on_for_make_run():
    assert stack_from_environ({"PREHEAT_API_KEY": f" {KEY} "}).api_key == KEY
    assert stack_from_environ({"PREHEAT_API_KEY": ""}).api_key is None
    assert stack_from_environ({}).api_key is None
