"""The in-process Lambda runtime: context, timeouts, JSON in and out, environments, os.environ."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from local import lambda_runtime
from local.lambda_runtime import (
    EnvironmentPatch,
    InvocationTimeout,
    LambdaContext,
    LambdaRuntime,
    MarshalError,
    local_aws_environment,
)
from local.stack import LocalStack
from local.template import Template
from tests.local.support import FIXTURE_TEMPLATE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime() -> LambdaRuntime:
    # The slow handler needs no AWS resources, so no stack: the runtime alone.
    return LambdaRuntime(Template.load(FIXTURE_TEMPLATE), name_prefix="runtime-test")


def test_context_counts_down_from_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(lambda_runtime, "time", SimpleNamespace(monotonic=lambda: now[0]))
    context = LambdaContext("f", "128", "arn", 1)
    assert context.get_remaining_time_in_millis() == 1000
    now[0] += 0.25
    assert context.get_remaining_time_in_millis() == 750
    now[0] += 5
    assert context.get_remaining_time_in_millis() == 0


def test_the_handler_gets_a_context_with_the_template_timeout(runtime: LambdaRuntime) -> None:
    result = runtime.invoke("SlowFunction", {"seconds": 0})
    # Timeout: 1 in the template: never more than 1000 ms left, and the call ran within it.
    assert 0 < result["remaining_ms"] <= 1000


def test_each_call_gets_a_new_request_id() -> None:
    first, second = (LambdaContext("f", "128", "arn", 3) for _ in range(2))
    assert first.aws_request_id != second.aws_request_id
    assert first.log_group_name == "/aws/lambda/f"


def test_running_past_the_timeout_fails_the_call(runtime: LambdaRuntime) -> None:
    with pytest.raises(InvocationTimeout, match="over its Timeout of 1s"):
        runtime.invoke("SlowFunction", {"seconds": 1.1})


def test_results_are_marshalled_like_the_python_runtime(runtime: LambdaRuntime) -> None:
    assert runtime.invoke("SlowFunction", {"decimal": True})["value"] == 1.5
    with pytest.raises(MarshalError):
        runtime.invoke("SlowFunction", {"unserializable": True})


def test_the_handler_gets_its_own_copy_of_the_event(runtime: LambdaRuntime) -> None:
    with pytest.raises(TypeError):
        runtime.invoke("SlowFunction", {"not json": object()})


def test_concurrent_calls_run_in_separate_environments_and_idle_ones_are_reused(
    runtime: LambdaRuntime,
) -> None:
    with ThreadPoolExecutor(3) as pool:
        modules = set(
            pool.map(lambda _: runtime.invoke("SlowFunction", {"seconds": 0.3})["module"], range(3))
        )
    assert len(modules) == 3  # three at once: three cold starts, no module globals shared
    again = {runtime.invoke("SlowFunction", {})["module"] for _ in range(3)}
    assert len(again) == 1
    assert again <= modules  # warm: an idle environment serves the call


def test_unknown_function_is_refused(runtime: LambdaRuntime) -> None:
    with pytest.raises(KeyError, match="Nope"):
        runtime.invoke("Nope", {})


def test_environment_patch_applies_drops_unsafe_variables_and_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "https://sqs.real.example")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "real-key")
    monkeypatch.delenv("GREETING", raising=False)
    patch = EnvironmentPatch({**local_aws_environment("http://127.0.0.1:1"), "GREETING": "hi"})
    patch.apply()
    try:
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert os.environ["AWS_ACCESS_KEY_ID"] == "local"
        assert os.environ["GREETING"] == "hi"
        assert os.environ["POWERTOOLS_TRACE_DISABLED"] == "true"
        assert "AWS_PROFILE" not in os.environ
        assert "AWS_ENDPOINT_URL_SQS" not in os.environ
    finally:
        patch.restore()
    assert os.environ["AWS_PROFILE"] == "production"
    assert os.environ["AWS_ENDPOINT_URL_SQS"] == "https://sqs.real.example"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "real-key"
    assert "GREETING" not in os.environ


def test_a_new_runtime_resets_the_layers_caches_but_keeps_its_modules(runtime: LambdaRuntime) -> None:
    runtime.invoke("SlowFunction", {})
    before = sys.modules["fixture_layer_lib"]  # the echo handler imports the fixture layer
    resets = before.reset_count
    fresh = LambdaRuntime(Template.load(FIXTURE_TEMPLATE), name_prefix="runtime-test-2")
    fresh.invoke("SlowFunction", {})
    assert sys.modules["fixture_layer_lib"] is before
    assert before.reset_count == resets + 1


def test_only_one_stack_runs_per_process() -> None:
    with LocalStack(FIXTURE_TEMPLATE) as first:
        with pytest.raises(RuntimeError, match="another LocalStack"):
            LocalStack(FIXTURE_TEMPLATE).start()
        assert first.api_url
    # Stopped, the next one may start (moto starts empty, so the same names are free again).
    with LocalStack(FIXTURE_TEMPLATE) as second:
        assert second.table_name("ItemsTable") == "preheat-local-ItemsTable"
