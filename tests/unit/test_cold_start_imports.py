"""What each function loads before its first invocation: only what it uses.

``python -m bench.cold_start`` times cold starts; this keeps the reasons they are short from
regressing, without timing anything: in a fresh process set up as Lambda would (the template's
variables, tracing on), each handler is imported and its clients built, then the modules it loaded
are listed. None may load boto3 (the adapters build botocore clients), requests (the adapters speak
urllib3) or libraries X-Ray would patch by default; the functions that never call AWS or HTTP
targets must not load botocore or the supernode drivers either.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
}

_REPORT = """
import json as _json
print(_json.dumps(sorted(_sys.modules)))
"""


def loaded_modules(function: cold_start.Function) -> set[str]:
    script = cold_start.function_script(function.spec, function.layer_dirs, function.factories) + _REPORT
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
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


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
    assert "preheat.entrypoints.observability" in modules or function.logical_id == "OpenApiFunction"
