"""schemathesis against the local stack, with docs/openapi.yaml as the contract: every answer to
generated requests (valid ones and invalid ones) conforms to the document (status code, content
type, body schema), and nothing is a server error, neither HTTP 5xx nor an envelope ``code`` 5xx.

Fixed seed, no shrinking, hypothesis pinned: the same cases every run. The stack wants an API key
(``PREHEAT_API_KEY`` locally, as ``AuthMode=API_KEY`` in AWS), sent with every generated request;
requests without it are checked separately. Images and files may only come from 127.0.0.1
(``AllowedRegistries``), so a generated URL never sends the worker to a host on the internet.

Not checked: schemathesis's ``negative_data_rejection`` and ``positive_data_acceptance``, which
expect HTTP 4xx for invalid input: the spec answers HTTP 200 with ``code`` 400 instead.

    .venv/bin/python -m pytest tests/contract/test_schemathesis.py -s   # prints the figures
    cat .local/contract/schemathesis.json                               # where every run leaves them
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from local.stack import LocalStack
from local.supernode import ReferenceSupernode

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
SEED = 20261127
API_KEY = "contractTestKey0123456789abcdefABCDEFGH"
# Generated cases per operation and mode; operations with little to vary (GET /api/check) end early.
MAX_EXAMPLES = {GenerationMode.POSITIVE: 110, GenerationMode.NEGATIVE: 90}
MIN_CASES = 500
FIGURES = ROOT / ".local" / "contract" / "schemathesis.json"


def envelope_is_not_a_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """The spec's answers are HTTP 200 whatever happened: a server error shows as ``code`` 5xx."""
    # Only the spec's own routes answer with the envelope (Harbor's answer with real status codes).
    if not case.operation.path.startswith("/api/") or case.operation.path == "/api/openapi.json":
        return None
    if response.status_code != 200:
        return None
    code = json.loads(response.content).get("code")
    if isinstance(code, int) and code >= 500:
        raise AssertionError(f"envelope code {code}: {json.loads(response.content).get('msg')}")
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    envelope_is_not_a_server_error,
]


class Tally:
    def __init__(self) -> None:
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self, case: Any, base_url: str, session: requests.Session, label: str) -> None:
        self.cases[label] += 1
        try:
            response = case.call(base_url=base_url, session=session, timeout=30)
        except Exception as exc:  # a dropped connection is a failure like any other
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}\n{case.as_curl_command()}")
            return
        try:
            body = json.loads(response.content)
            code = body.get("code") if isinstance(body, dict) else None
        except ValueError:
            code = None
        self.statuses[f"HTTP {response.status_code} code {code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a BaseExceptionGroup
            self.failures.append(f"{label}: {exc}\n{case.as_curl_command()}")

    @property
    def total(self) -> int:
        return sum(self.cases.values())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with (
        ReferenceSupernode(tmp_path_factory.mktemp("cache")).start() as supernode,
        LocalStack(
            supernodes=[supernode.url],
            cache_dir=tmp_path_factory.mktemp("unused"),
            parameters={"AllowedRegistries": "127.0.0.1"},
            api_key=API_KEY,
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_dict(yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")))


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report, don't minimise
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def _drive(
    tally: Tally, strategy: Any, count: int, label: str, base_url: str, session: requests.Session
) -> None:
    @seed(SEED)
    @_settings(count)
    @given(case=strategy)
    def run(case: Any) -> None:
        tally.run(case, base_url, session, label)

    run()


def test_every_generated_request_gets_a_conforming_answer(stack: LocalStack, schema: Any):
    tally = Tally()
    headers = {"x-api-key": API_KEY}
    started = time.monotonic()
    with requests.Session() as session:
        operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda o: o.label)
        documented = yaml.safe_load(DOCUMENT.read_text())["paths"]
        assert len(operations) == sum(len(methods) for methods in documented.values())
        for operation in operations:
            # The document's own examples, once each.
            for number, strategy in enumerate(operation.get_strategies_from_examples(headers=headers)):
                _drive(tally, strategy, 1, f"{operation.label} [example {number}]", stack.api_url, session)
            for mode, count in MAX_EXAMPLES.items():
                strategy = operation.as_strategy(generation_mode=mode, headers=headers)
                try:
                    _drive(
                        tally, strategy, count, f"{operation.label} [{mode.value}]", stack.api_url, session
                    )
                except Unsatisfiable:
                    # An operation with no parameter and no security (GET /console) has nothing to
                    # make invalid; every other one must yield negative cases.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    assert operation.path == "/console", operation.label
    figures = {
        "cases": tally.total,
        "failures": len(tally.failures),
        "seed": SEED,
        "seconds": round(time.monotonic() - started, 1),
        "by_operation": dict(sorted(tally.cases.items())),
        "answers": dict(sorted(tally.statuses.items())),
    }
    # Shown with -s, and kept where `make test` leaves it.
    print(f"\nSCHEMATHESIS-FIGURES {json.dumps(figures)}")
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    assert not tally.failures, f"{len(tally.failures)} of {tally.total} cases failed:\n" + "\n\n".join(
        tally.failures[:10]
    )
    assert tally.total >= MIN_CASES, dict(tally.cases)
    # Both sides of the contract were exercised: tasks created, and requests refused with code 400.
    assert tally.statuses["HTTP 200 code 200"] > 0
    assert tally.statuses["HTTP 200 code 400"] > 0


def test_a_created_task_answers_its_status_as_documented(stack: LocalStack, schema: Any):
    """The link POST /api/preheat -> GET /api/preheat/{taskId}: real tasks, not only unknown ids. Both
    point at the reference supernode, which answers 404 to registry and file requests: the tasks end
    FAIL at once, saying why."""
    headers = {"x-api-key": API_KEY}
    status = schema["/api/preheat/{taskId}"]["GET"]
    server = stack.supernodes[0].removeprefix("http://")
    for body in (
        {"type": "image", "url": f"{server}/demo/app:v1", "platform": "linux/amd64"},
        {"type": "file", "url": f"http://{server}/files/model.bin"},
    ):
        created = requests.post(f"{stack.api_url}/api/preheat", json=body, headers=headers, timeout=30)
        schema["/api/preheat"]["POST"].validate_response(created)
        task_id = created.json()["data"]["taskId"]
        deadline = time.monotonic() + 30
        while True:
            for detail in (False, True):
                case = status.Case(path_parameters={"taskId": task_id}, query={"detail": detail})
                response = case.call(base_url=stack.api_url, headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS)
                data = response.json()["data"]
                assert data["taskId"] == task_id
            if data["status"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert data["status"] == "FAIL", data
        assert data["msg"]
    # The listing holds them now (the generated listings above ran before any task existed): walk it
    # a task a page, every answer as documented.
    listing = schema["/api/preheat"]["GET"]
    seen: list[str] = []
    query: dict[str, Any] = {"limit": 1}
    while True:
        case = listing.Case(query=query)
        response = case.call(base_url=stack.api_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)
        page = response.json()["data"]
        seen += [task["taskId"] for task in page["tasks"]]
        if page["next"] is None:
            break
        query = {"limit": 1, "cursor": page["next"]}
    assert len(seen) == len(set(seen)) >= 2


def test_verify_then_evict_then_verify_answer_as_documented(stack: LocalStack, schema: Any):
    """The links POST -> GET /peers -> DELETE -> DELETE again -> GET /peers on a real task (it ends
    FAIL at once against the reference supernode: nothing to ask about, and still evictable)."""
    headers = {"x-api-key": API_KEY}
    server = stack.supernodes[0].removeprefix("http://")
    created = requests.post(
        f"{stack.api_url}/api/preheat",
        json={"type": "file", "url": f"http://{server}/files/evicted.bin"},
        headers=headers,
        timeout=30,
    )
    task_id = created.json()["data"]["taskId"]
    peers = schema["/api/preheat/{taskId}/peers"]["GET"]
    evict = schema["/api/preheat/{taskId}"]["DELETE"]
    answers = []
    for operation in (peers, evict, evict, peers):
        case = operation.Case(path_parameters={"taskId": task_id})
        response = case.call(base_url=stack.api_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)
        answers.append(response.json())
    first_verify, evicted, again, last_verify = answers
    assert first_verify["code"] == 200, first_verify
    assert evicted["code"] == 200, evicted
    assert evicted["data"]["evictedAt"]
    assert again == evicted  # a repeat changes nothing
    assert last_verify["data"]["summary"]["layersWarm"] == 0


def test_without_the_key_every_operation_is_refused_as_documented(stack: LocalStack, schema: Any):
    for result in schema.get_all_operations():
        operation = result.ok()
        path = operation.path.replace("{taskId}", "5f0c6b7e-3f0e-4b55-9a43-6c2d4a1e9b10")
        if path == "/console":
            # The page holds no data and asks for the key itself: served to anyone.
            response = requests.get(f"{stack.api_url}{path}", timeout=30)
            assert response.status_code == 200
            operation.validate_response(response)
            continue
        for headers, status_code in (({}, 401), ({"x-api-key": API_KEY + "x"}, 403)):
            response = requests.request(
                operation.method.upper(), f"{stack.api_url}{path}", headers=headers, json={}, timeout=30
            )
            assert response.status_code == status_code, (operation.label, headers)
            operation.validate_response(response)
