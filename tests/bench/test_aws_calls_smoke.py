"""The AWS-calls benchmark runs end to end with tiny images and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import aws_calls
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY
from tests.support.fixtures import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_aws_calls_benchmark_counts_the_calls_of_each_image(tmp_path: Path):
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    output = tmp_path / "aws_calls.json"

    assert aws_calls.main(["--layers", "1,3", "--runs", "1", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert result["benchmark"] == "aws_calls"
    assert set(result["figures"]) == {"layers_1", "layers_3", "spread", "cost_1", "cost_3"}
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["value"], int if not name.startswith("cost") else float), name
        assert isinstance(item["met"], bool), name
    for layers in ("layers_1", "layers_3"):
        cost = result["cost"]["per_1000_preheats"][layers]
        assert cost["by_service"]["lambda"] > 0
    for case in result["cases"].values():
        # The POST and the worker's step, timed.
        assert {"PreheatFunction", "WorkerFunction"} <= {
            i["function"] for i in case["runs"][0]["invocations"]
        }
        assert cost["by_service"]["eventbridge"] > 0  # the completion event
    for case in result["cases"].values():
        [run] = case["runs"]
        assert run["status"] == "SUCCESS"
        assert run["total"] == sum(run["calls"].values()) > 0
        assert all(name.split(":")[0] in ("dynamodb", "sqs", "events") for name in run["calls"])
        assert run["calls"]["events:PutEvents"] == 1
