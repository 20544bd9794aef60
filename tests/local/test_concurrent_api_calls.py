"""API calls run side by side in the local runtime, and none reads another's request.

powertools' API resolvers keep the request being resolved on their common base class; in Lambda a
process serves one invocation at a time, here every environment shares the process. The runtime
gives that state one value per invocation (``isolate_api_resolvers``): these tests hold many
requests inside their routes at once and check each one still sees its own body and context.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from local.apigateway import build_proxy_event, routes_from_template
from local.lambda_runtime import LambdaRuntime, isolate_api_resolvers
from local.template import Resolver, Template

pytestmark = pytest.mark.integration

CALLS = 24
AT_ONCE = 8

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  SyncLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layer/
  Api:
    Type: AWS::Serverless::Api
    Properties:
      StageName: test
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: echo/
      Handler: app.lambda_handler
      Runtime: python3.13
      Timeout: 10
      Layers:
        - !Ref SyncLayer
      Events:
        Echo:
          Type: Api
          Properties:
            RestApiId: !Ref Api
            Path: /echo/{name}
            Method: POST
"""

# Shared by every environment, as the project's layer is: where concurrent requests meet.
LAYER = f"""\
import threading

all_inside = threading.Barrier({AT_ONCE}, timeout=10)
"""

# A resolver built like the project's (routes on a Router included in an APIGatewayRestResolver),
# reading the request before and after every other request in flight has been resolved too.
HANDLER = """\
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.api_gateway import Router
from echo_sync import all_inside

router = Router()


@router.post("/echo/<name>")
def echo(name):
    before = router.current_event.json_body["n"]
    all_inside.wait()  # every concurrent request has now set its own event
    return {
        "name": name,
        "before": before,
        "after": router.current_event.json_body["n"],
        "app": app.current_event.json_body["n"],
        "path": app.current_event.path,
        "request_id": app.lambda_context.aws_request_id,
    }


app = APIGatewayRestResolver()
app.include_router(router)


def lambda_handler(event, context):
    answer = app.resolve(event, context)
    answer["headers"] = {**(answer.get("headers") or {}), "X-Request-Id": context.aws_request_id}
    return answer
"""


@pytest.fixture(scope="module")
def echo_runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[LambdaRuntime, Template]:
    root = tmp_path_factory.mktemp("concurrent-api")
    (root / "echo").mkdir()
    (root / "echo" / "app.py").write_text(HANDLER)
    (root / "layer").mkdir()
    (root / "layer" / "echo_sync.py").write_text(LAYER)
    (root / "template.yaml").write_text(TEMPLATE)
    template = Template.load(root / "template.yaml")
    return LambdaRuntime(template, name_prefix="concurrent-api-test"), template


def _event(template: Template, n: int) -> dict[str, Any]:
    resolver = Resolver(template, template.parameter_values({}), {}, "us-east-1", "123456789012")
    [route] = routes_from_template(template, resolver)
    return build_proxy_event(
        route,
        method="POST",
        path=f"/echo/call-{n}",
        path_parameters={"name": f"call-{n}"},
        query=[],
        headers=[("Content-Type", "application/json")],
        body=json.dumps({"n": n}).encode(),
        source_ip="127.0.0.1",
        request_id=f"request-{n}",
    )


def test_concurrent_requests_each_read_their_own_body_and_context(
    echo_runtime: tuple[LambdaRuntime, Template],
) -> None:
    runtime, template = echo_runtime

    def call(n: int) -> tuple[int, dict[str, Any], str]:
        answer = runtime.invoke("EchoFunction", _event(template, n))
        return n, json.loads(answer["body"]), answer["headers"]["X-Request-Id"]

    # AT_ONCE requests are inside the route together (the handler's barrier would time out, and
    # the call fail, were they taking turns); every batch of them must keep its own requests apart.
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(call, range(CALLS)))

    for n, body, request_id in results:
        assert body["name"] == f"call-{n}"
        assert body["before"] == body["after"] == body["app"] == n
        assert body["path"] == f"/echo/call-{n}"
        assert body["request_id"] == request_id


def test_the_isolation_is_installed_once_and_keeps_a_single_invocation_unchanged() -> None:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    assert isolate_api_resolvers() is True
    assert isolate_api_resolvers() is True  # idempotent
    app = APIGatewayRestResolver()

    @app.get("/hello")
    def hello() -> dict[str, Any]:
        return {"path": app.current_event.path}

    event = {
        "httpMethod": "GET",
        "path": "/hello",
        "resource": "/hello",
        "requestContext": {"stage": "$default"},
    }
    answer = app.resolve(event, None)  # type: ignore[arg-type]
    assert json.loads(answer["body"]) == {"path": "/hello"}
    # What resolve() assigned on the class reads back the same way, from the class and the instance.
    assert BaseRouter.current_event.path == "/hello"
    assert app.current_event is BaseRouter.current_event


def test_a_thread_that_resolved_nothing_sees_no_request() -> None:
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    isolate_api_resolvers()
    seen: list[str] = []

    def look() -> None:
        try:
            seen.append(BaseRouter.current_event.path)
        except AttributeError:
            seen.append("none")

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert seen == ["none"]
