"""The API's contract, docs/openapi.yaml: a valid OpenAPI 3 document, the one the layer ships and
GET /api/openapi.json serves, naming exactly the template's routes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from local.template import Template
from preheat.models import BlobProgress, BlobState, PeerCopy

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
SHIPPED = ROOT / "layers" / "shared" / "preheat" / "openapi.json"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_document_is_valid_openapi_3(document: dict[str, Any]):
    assert document["openapi"].startswith("3.")
    validate(document)


def test_the_layer_ships_exactly_the_checked_in_document(document: dict[str, Any]):
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert shipped == document, f"{SHIPPED.relative_to(ROOT)} is out of date: run `make openapi`"


def test_every_route_of_the_template_is_in_the_document_and_nothing_else(document: dict[str, Any]):
    template = Template.load(ROOT / "template.yaml")
    routes = {
        (event.path, event.method.lower())
        for function in template.functions.values()
        for event in function.api_events
    }
    documented = {
        (path, method)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }
    assert routes - documented == set(), "routes of template.yaml missing from docs/openapi.yaml"
    assert documented - routes == set(), "docs/openapi.yaml documents routes template.yaml does not have"


def test_every_operation_documents_api_gateways_own_answers(document: dict[str, Any]):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            assert operation.get("operationId"), (path, method)
            # With AuthMode=API_KEY, API Gateway answers these itself, before the function (the
            # console page wants no key, but the stage's throttle holds for it too).
            gateway = {"429"} if path == "/console" else {"401", "403", "429"}
            assert gateway <= set(operation["responses"]), (path, method)
            assert any(code.startswith("2") for code in operation["responses"]), (path, method)


def test_the_key_can_be_presented_every_way_harbor_sends_it(document: dict[str, Any]):
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": schemes["apiKey"]["description"],
    }
    assert schemes["bearerKey"]["scheme"] == "bearer"
    assert schemes["basicKey"]["scheme"] == "basic"
    # Any one of them will do (and SigV4 when AuthMode=IAM).
    assert document["security"] == [{"apiKey": []}, {"bearerKey": []}, {"basicKey": []}, {"sigv4": []}]


def test_the_spec_envelope_is_what_the_three_routes_answer(document: dict[str, Any]):
    schemas = document["components"]["schemas"]
    for answer in ("CheckAnswer", "PreheatAnswer", "StatusAnswer", "ListAnswer"):
        success, error = schemas[answer]["oneOf"]
        assert success["properties"]["code"]["enum"] == [200]
        assert error == {"$ref": "#/components/schemas/ErrorAnswer"}
    assert schemas["ErrorAnswer"]["required"] == ["code", "msg"]
    request = schemas["PreheatRequest"]
    targeting = {"scope", "clusterIds", "ips", "count", "percentage"}
    assert set(request["properties"]) == {
        "type",
        "url",
        "header",
        "platform",
        *targeting,
        "keepWarm",
        "taskToken",
    }
    assert request["required"] == ["type", "url"]
    status = schemas["TaskStatus"]["properties"]
    assert status["status"]["enum"] == ["RUNNING", "SUCCESS", "FAIL"]
    assert {"layers", "blobs", *targeting} <= set(status)


def test_the_openapi_function_serves_the_shipped_document():
    from local.lambda_runtime import load_handler

    template = Template.load(ROOT / "template.yaml")
    spec = template.functions["OpenApiFunction"]
    handler = load_handler(spec, template.layer_dirs(spec))
    event = json.loads((ROOT / "events" / "openapi.json").read_text())
    answer = handler(event, None)
    assert answer["statusCode"] == 200
    assert answer["headers"]["Content-Type"] == "application/json"
    assert json.loads(answer["body"]) == json.loads(SHIPPED.read_text(encoding="utf-8"))


def test_a_blob_with_a_schedulers_peers_is_what_the_blob_schema_describes(document: dict[str, Any]):
    peers = tuple(PeerCopy(f"node-{n}", f"10.0.1.{n}", n == 0) for n in range(3))
    blob = BlobProgress("sha256:" + "a" * 64, "scheduler-0:8002", digest="sha256:" + "a" * 64).looked(
        BlobState.PENDING, "sha256:aaaaaaaaaaaa not finished on node-1 (10.0.1.1)", peers
    )
    answer = blob.to_api()
    schema = document["components"]["schemas"]["Blob"]

    assert Draft202012Validator(schema).is_valid(answer)
    assert (answer["peerCount"], answer["finishedPeers"]) == (3, 1)
    assert not Draft202012Validator(schema).is_valid({**answer, "peers": [{"hostname": "x"}]})
