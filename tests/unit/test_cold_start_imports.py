"""What each function loads before its first invocation: only what it uses.

``python -m bench.cold_start`` times cold starts; this keeps the reasons they are short from
regressing, without timing anything: in a fresh process set up as Lambda would (the template's
variables, tracing on), each handler is imported and its clients built, then the modules it loaded
are listed. None may load boto3 (the adapters build botocore clients), requests (the adapters speak
urllib3) or libraries X-Ray would patch by default; the functions that never call AWS or HTTP
targets must not load botocore or the supernode drivers either, and X-Ray patches only the libraries
a function calls through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from bench import cold_start
from local.template import Template

NEVER = ("boto3", "s3transfer", "requests", "charset_normalizer", "sqlite3")
# botocore's clients (the bare package is imported by powertools to register its user agent).
AWS_CLIENTS = ("botocore.session", "botocore.client")
# What each function may not load on top of NEVER.
ALSO_NEVER: dict[str, tuple[str, ...]] = {
    "ApiKeyAuthorizerFunction": (*AWS_CLIENTS, "urllib3", "preheat.adapters"),
    "OpenApiFunction": (*AWS_CLIENTS, "urllib3", "preheat.adapters"),
    "CheckFunction": (*AWS_CLIENTS, "preheat.adapters.dynamodb", "preheat.adapters.registry"),
    "StatusFunction": ("preheat.adapters.http", "preheat.adapters.registry"),
    "PreheatFunction": ("preheat.adapters.http", "preheat.adapters.registry"),
    # The sweeper reads and writes the table, puts events, queues a message: no HTTP target, no worker.
    "SweeperFunction": (
        "preheat.adapters.http",
        "preheat.adapters.registry",
        "preheat.adapters.dragonfly1",
        "preheat.adapters.dragonfly2",
        "preheat.worker",
        "preheat.service",
    ),
}

_REPORT = """
import json as _json
print(_json.dumps(sorted(_sys.modules)))
"""


_PATCHED = """
import json as _json
_patcher = _sys.modules.get("aws_xray_sdk.core.patcher")
print(_json.dumps(sorted(_patcher._PATCHED_MODULES) if _patcher else []))
"""


def run_function(function: cold_start.Function, report: str) -> list[str]:
    """What ``report`` prints (a JSON list) in a fresh process that imported the function's handler
    and built its clients, set up as Lambda would (tracing on)."""
    script = cold_start.function_script(function.spec, function.layer_dirs, function.factories) + report
    # The timing report the script ends with is printed first; the module list is the last line.
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=cold_start.lambda_environment(function),
        cwd=function.spec.code_uri,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return printed


def loaded_modules(function: cold_start.Function) -> set[str]:
    return set(run_function(function, _REPORT))


FUNCTIONS = cold_start.functions_of(Template.load(cold_start.TEMPLATE), None)


@pytest.mark.parametrize("function", FUNCTIONS, ids=[function.logical_id for function in FUNCTIONS])
def test_a_function_loads_only_what_it_uses(function: cold_start.Function):
    modules = loaded_modules(function)

    forbidden = NEVER + ALSO_NEVER.get(function.logical_id, ())
    loaded = sorted(
        name for name in modules if any(name == root or name.startswith(f"{root}.") for root in forbidden)
    )
    assert not loaded, f"{function.logical_id} loads {sorted({name.split('.')[0] for name in loaded})}"
    # The handler really was imported and its clients built (the list is not vacuously clean).
    assert "preheat.observability" in modules or function.logical_id == "OpenApiFunction"


# What X-Ray patches in each function: the libraries its adapters call through, and no others.
PATCHED = {
    "ApiKeyAuthorizerFunction": [],
    "OpenApiFunction": [],
    "CheckFunction": ["httplib"],
    "WorkerFunction": ["botocore", "httplib"],
    "SweeperFunction": ["botocore"],
}


@pytest.mark.parametrize("logical_id", sorted(PATCHED))
def test_tracing_patches_only_what_a_function_calls_through(logical_id: str):
    [function] = [function for function in FUNCTIONS if function.logical_id == logical_id]
    assert run_function(function, _PATCHED) == PATCHED[logical_id]


# The modules of the Dragonfly 2 scheduler target: gRPC, protobuf and the bindings.
GRPC = ("grpc", "grpc_health", "dragonfly_api", "google.protobuf", "preheat.adapters.dragonfly2_scheduler")
SCHEDULER_ENV = {
    "PREHEAT_SUPERNODE_API": "dragonfly2-scheduler",
    "PREHEAT_SUPERNODES": "scheduler-0.dragonfly:8002",
}


@pytest.mark.parametrize("function", FUNCTIONS, ids=[function.logical_id for function in FUNCTIONS])
def test_only_the_worker_and_the_check_load_grpc_when_the_target_is_a_scheduler(
    function: cold_start.Function,
):
    aimed = replace(function, environment={**function.environment, **SCHEDULER_ENV})
    modules = loaded_modules(aimed)

    loaded = sorted(
        {name for name in modules for root in GRPC if name == root or name.startswith(f"{root}.")}
    )
    if function.logical_id in ("WorkerFunction", "CheckFunction", "LifecycleFunction"):
        # They build the scheduler driver at cold start (verify asks the schedulers), and it is the
        # one place gRPC comes from; they alone carry the gRPC layer (tests/template/test_sam.py).
        assert "grpc" in loaded
        assert "preheat.adapters.dragonfly2_scheduler" in loaded
    else:
        assert not loaded, f"{function.logical_id} loads {sorted({name.split('.')[0] for name in loaded})}"


def test_no_function_loads_grpc_for_the_http_targets():
    [worker] = [function for function in FUNCTIONS if function.logical_id == "WorkerFunction"]
    for api in ("dragonfly1", "dragonfly2"):
        modules = loaded_modules(
            replace(worker, environment={**worker.environment, "PREHEAT_SUPERNODE_API": api})
        )
        assert not {name for name in modules if name == "grpc" or name.startswith("grpc.")}, api
