"""The cold-start benchmark runs one function once (and diagnoses its imports), and reads
``-X importtime`` output as trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cold_start
from local.template import Template

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |     botocore.x
import time:       200 |        300 |   boto3
import time:       500 |        500 |     heavy.child
import time:       400 |        900 |   heavy
import time:        50 |       1250 | preheat.bootstrap
import time:        30 |         30 | json
"""
FLOOR = """\
import time:       100 |        100 |   botocore.x
import time:       200 |        300 | boto3
"""


def test_heavy_imports_charge_each_package_with_what_the_floor_lacks():
    heavy = cold_start.heavy_imports(IMPORTTIME, FLOOR)

    assert heavy["project_modules_ms"] == 0.1
    assert heavy["third_party_ms"] == {"heavy (from preheat.bootstrap)": 0.9, "json (from app)": 0.0}
    assert heavy["beyond_floor_ms"] == 1.0


def test_the_clients_of_each_function_come_from_its_policies():
    template = Template.load(cold_start.TEMPLATE)
    functions = {function.logical_id: function for function in cold_start.functions_of(template, [])}

    assert functions["StatusFunction"].services == ("dynamodb",)
    assert functions["PreheatFunction"].services == ("dynamodb", "sqs")
    assert functions["CheckFunction"].services == ()
    assert "task_store._client" in functions["WorkerFunction"].factories
    assert functions["StatusFunction"].environment["PREHEAT_TABLE_NAME"] == "bench-TasksTable"


@pytest.mark.integration
def test_cold_start_benchmark_writes_its_figures(tmp_path: Path):
    output = tmp_path / "cold_start.json"

    code = cold_start.main(
        [
            *("--runs", "1", "--functions", "StatusFunction", "--importtime", "--diagnosis-runs", "1"),
            *("--output", str(output)),
        ]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert set(result["figures"]) == {"StatusFunction_vs_floor", "StatusFunction_peak_rss"}
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["met"], bool), name
    status = result["functions"]["StatusFunction"]
    assert status["median_ms"] > 0
    assert status["peak_rss_mib"] > status["floor_peak_rss_mib"] > 5
    assert status["heavy_imports"]["beyond_floor_ms"] > 0
    assert status["heavy_imports"]["runs"] == 1
    # The breakdown: the Status function loads the logger, the tracer (patching botocore) and the
    # event handler, and its "+powertools" process loads the same.
    assert {
        "aws_lambda_powertools.logging.logger",
        "aws_xray_sdk.ext.botocore.patch",
        "aws_lambda_powertools.event_handler",
    } <= set(status["powertools_loaded"])
    assert "aws_lambda_powertools.utilities.batch" not in status["powertools_loaded"]
    assert status["floor_median_ms"] < status["toolkit_median_ms"]
    assert status["own_code_ms"] == pytest.approx(status["median_ms"] - status["toolkit_median_ms"], abs=0.2)


def test_the_toolkit_of_a_function_is_its_floor_and_the_powertools_it_loaded():
    loaded = ("aws_lambda_powertools.utilities.batch", "aws_xray_sdk.core", "aws_xray_sdk.ext.botocore.patch")

    script = cold_start.toolkit_script(("dynamodb",), loaded)

    assert script.startswith(cold_start.floor_script(("dynamodb",)).removesuffix(cold_start._CHILD_REPORT))
    assert script.endswith(cold_start._CHILD_REPORT)
    # The tracer is built before it patches, whatever order the function reported them in.
    assert (
        script.index("Tracer(")
        < script.index("_tracer.patch(['botocore'])")
        < script.index("BatchProcessor(")
    )
    assert "APIGatewayRestResolver" not in script
    compile(script, "toolkit", "exec")
