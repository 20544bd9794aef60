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
    # Every function of the template is measured, the sweeper with the factory its handler reaches.
    assert set(functions) == set(template.functions)
    assert functions["SweeperFunction"].factories == ("sweeper", "task_store._client", "task_queue._client")


def _samples(ms: float) -> list[cold_start.Sample]:
    return [cold_start.Sample(ms / 1000, ms / 2000, ms / 1000, 50.0)] * 3


@pytest.mark.parametrize(
    ("function_ms", "toolkit_ms", "met_ratio", "met_own"),
    [
        (270, 240, True, True),  # Worker-like: 1.42x the bare floor, yet 1.125x its toolkit and 30 ms
        (285, 240, False, False),  # 1.19x its toolkit, 45 ms of its own
        (150, 131, True, True),  # Check-like: 3.75x a Logger-only floor is powertools', not the project's
        (62, 40, False, True),  # a small toolkit: 22 ms of its own is 1.55x it
    ],
)
def test_the_targets_are_the_project_s_own_cost_and_the_bare_floor_ratio_has_none(
    function_ms: float, toolkit_ms: float, met_ratio: bool, met_own: bool
):
    template = Template.load(cold_start.TEMPLATE)
    [worker] = cold_start.functions_of(template, ["WorkerFunction"])
    measured = cold_start.Measured(
        {"WorkerFunction": _samples(function_ms)},
        {worker.floor_key: _samples(40)},
        {"WorkerFunction": _samples(toolkit_ms)},
        {"WorkerFunction": ()},
    )

    result = cold_start.report([worker], measured, 3, diagnose_all=False, diagnosis_runs=0)

    figures = result["figures"]
    assert set(figures) == {"WorkerFunction_vs_toolkit", "WorkerFunction_own_code", "WorkerFunction_peak_rss"}
    assert figures["WorkerFunction_vs_toolkit"]["value"] == round(function_ms / toolkit_ms, 3)
    assert figures["WorkerFunction_vs_toolkit"]["met"] is met_ratio
    assert figures["WorkerFunction_own_code"]["value"] == function_ms - toolkit_ms
    assert figures["WorkerFunction_own_code"]["met"] is met_own
    details = result["functions"]["WorkerFunction"]
    assert details["ratio"] == round(function_ms / 40, 3)
    assert "no target" in figures["WorkerFunction_vs_toolkit"]["detail"]


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
    assert set(result["figures"]) == {
        "StatusFunction_vs_toolkit",
        "StatusFunction_own_code",
        "StatusFunction_peak_rss",
    }
    assert result["figures"]["StatusFunction_vs_toolkit"]["target"] == 1.15
    assert result["figures"]["StatusFunction_own_code"]["target"] == 30.0
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
    assert status["ratio_to_toolkit"] == pytest.approx(
        status["median_ms"] / status["toolkit_median_ms"], abs=0.01
    )
    # The ratio to the bare floor stays in the report, without a target.
    assert status["ratio"] == pytest.approx(status["median_ms"] / status["floor_median_ms"], abs=0.01)


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


def test_the_functions_carrying_grpc_get_a_scheduler_row_with_the_scheduler_variables():
    template = Template.load(cold_start.TEMPLATE)
    both = (cold_start.DEFAULT_TARGET, cold_start.SCHEDULER_TARGET)

    functions = cold_start.functions_of(template, [], both)

    rows = [function.key for function in functions]
    assert "WorkerFunction@dragonfly2-scheduler" in rows
    assert "CheckFunction@dragonfly2-scheduler" in rows
    scheduler_rows = [function for function in functions if function.scheduler]
    # Only the functions the template gives the gRPC layer.
    assert {function.logical_id for function in scheduler_rows} == {
        logical_id for logical_id, spec in template.functions.items() if cold_start.carries_grpc(spec)
    }
    for function in scheduler_rows:
        assert function.environment["PREHEAT_SUPERNODE_API"] == "dragonfly2-scheduler"
        assert function.environment["PREHEAT_SUPERNODES"] == "127.0.0.1:1"
        assert function.label.endswith("(scheduler)")
    [default_worker] = [f for f in functions if f.key == "WorkerFunction"]
    assert "PREHEAT_SUPERNODE_API" not in default_worker.environment or (
        default_worker.environment["PREHEAT_SUPERNODE_API"] != "dragonfly2-scheduler"
    )


def test_a_scheduler_row_counts_the_grpc_import_as_its_own_and_says_so():
    template = Template.load(cold_start.TEMPLATE)
    [worker] = cold_start.functions_of(template, ["WorkerFunction"], (cold_start.SCHEDULER_TARGET,))
    key = "WorkerFunction@dragonfly2-scheduler"
    measured = cold_start.Measured(
        {key: _samples(400)},
        {worker.floor_key: _samples(200)},
        {key: _samples(270)},
        {key: ()},
        grpc={key: _samples(100)},
    )

    result = cold_start.report([worker], measured, 3, diagnose_all=False, diagnosis_runs=0)

    details = result["functions"][key]
    assert details["own_code_ms"] == 130
    assert details["grpc_import_ms"] == 100
    assert details["own_code_less_grpc_ms"] == 30
    assert "gRPC" in result["figures"][f"{key}_own_code"]["detail"]
    label = result["figures"][f"{key}_vs_toolkit"]["label"]
    assert label == "cold start Worker (scheduler) / (floor + its powertools)"


def test_the_grpc_import_is_timed_after_the_function_s_toolkit():
    script = cold_start.grpc_script(("dynamodb", "sqs"), ("aws_xray_sdk.core",))

    toolkit = cold_start.toolkit_script(("dynamodb", "sqs"), ("aws_xray_sdk.core",))
    assert script.startswith(toolkit.removesuffix(cold_start._CHILD_REPORT))
    # The clock restarts after the toolkit is built, then the driver's imports alone are timed.
    assert script.rindex("_started = _time.perf_counter()") < script.index("import grpc")
    assert script.index("Tracer(") < script.index("import grpc")
    compile(script, "grpc", "exec")
