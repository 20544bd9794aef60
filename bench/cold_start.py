"""Cold start of every function: import its handler module and build its clients, in a fresh process.

    .venv/bin/python -m bench.cold_start [--runs 10] [--functions StatusFunction,...] [--importtime]

For each function of ``template.yaml`` a fresh Python process does what a new Lambda execution
environment does before its first invocation: with the function's directory and the shared layer
first on ``sys.path`` (``/var/task``, ``/opt/python``), the template's variables for the function
(resources given dummy names), Lambda's own variables (so powertools' Tracer is on, as with the
template's ``Tracing: Active``) and dummy AWS credentials (no network is needed), it imports the
handler module and calls the bootstrap factories the function uses, building their botocore clients
(``task_store()._client``, ``task_queue()._client``) and domain objects. The AWS clients a function
builds are read from its IAM policies in the template (DynamoDB actions: the task store's client;
SQS: the queue's).

The floor of a function is a fresh process that imports botocore and builds the same clients from
one session (with the adapters' client config), and nothing else: what any Python Lambda using those
clients pays. A function that builds no AWS client (the authorizer, the OpenAPI document, the
supernode check) is compared with a process that imports the powertools Logger and builds one, the
least any powertools-instrumented handler loads. (The completion events' client is built on a
task's end, not at cold start, so it is in neither.)

Each function is compared with its "+powertools" process: the floor plus the powertools utilities
the function loads (``POWERTOOLS_PIECES``; which ones, a first run of the function that is not
counted finds out), built as the function builds them, under the function's variables. Its ratio to
the floor (``toolkit_ratio``) is what those utilities cost before a line of the project runs; the
function less it (``own_code_ms``) is the project's own share.

Each process times itself from its first statement to its last (the interpreter's own start-up,
the same for both, is left out), and reports its peak RSS: ``VmHWM`` from ``/proc/self/status``
(``getrusage``'s ``ru_maxrss`` where there is no ``/proc``; on Linux it survives ``exec``, so a
child forked from a large parent would report the parent's size). Runs go round the
functions (each followed by its "+powertools" process) and floors in turn; figures are medians of
``--runs``.

Targets, on what the project itself adds (the guide requires powertools, so its share is not the
project's to cut): each function at most 1.15x its "+powertools" process, and its own code at most
30 ms; peak RSS below the function's MemorySize. The ratio to the bare floor is reported, without a
target. For a function that misses a time target, three more runs under ``python -X importtime``
(and three of its floor; medians) name what it imports beyond the floor, by the module through
which the project's code reaches it: where the time goes.

The functions that carry the gRPC layer (the worker and the check) are measured twice: with the
template's variables (the default target, Dragonfly 1), and as "<name> (scheduler)" with
``PREHEAT_SUPERNODE_API=dragonfly2-scheduler`` and ``PREHEAT_SUPERNODES=127.0.0.1:1``, where their
factories build the gRPC driver (``bootstrap.supernode_driver``; a channel connects lazily, so no
scheduler is needed). Their floor and "+powertools" processes are the same as the default rows':
the gRPC runtime is not a toolkit every function pays but the scheduler target's own cost, so it is
in "own". To split "own" into the gRPC import and the rest, each run also times, in a process of
the row's "+powertools" (under its variables), what the driver imports (``grpc``, ``dragonfly_api``'s
scheduler bindings, ``grpc_health``) imported after it: the clock starts once the toolkit is built,
so the figure is the gRPC import's marginal cost where the function pays it (the standard library
modules powertools has loaded already are not counted again). (Locally gRPC comes from the virtual
environment; in Lambda, from the GrpcLayer.) ``--targets dragonfly1`` leaves these rows out.

Results go to ``bench/results/cold_start.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import LAYER, RESULTS
from bench._import_times import heavy_imports
from bench.common import figure, figure_rows, median, table, write_result
from local.template import FunctionSpec, PhysicalResource, Ref, Resolver, Template, TemplateError

NAME = "cold_start"
PROJECT_ROOT = LAYER.parent.parent
TEMPLATE = PROJECT_ROOT / "template.yaml"
# A function against its floor plus the powertools utilities it loads, and its own code's share.
TARGET_TOOLKIT_RATIO = 1.15
TARGET_OWN_CODE_MS = 30.0
REGION = "us-east-1"
ACCOUNT = "123456789012"

QUICK_ARGS = ["--runs", "3"]
DIAGNOSIS_RUNS = 3

# The bootstrap factories each function's handler reaches on its first invocation (besides the
# AWS clients, which come from the template's policies). A function not listed builds its clients.
DOMAIN_FACTORIES: dict[str, tuple[str, ...]] = {
    "CheckFunction": ("supernode_driver",),
    "PreheatFunction": ("preheat_service",),
    "StatusFunction": ("preheat_service",),
    "LifecycleFunction": ("preheat_service", "lifecycle_service"),
    "WorkerFunction": ("worker",),
    "DeadLetterFunction": (),
    "ScheduledPreheatFunction": ("preheat_service",),
    "SweeperFunction": ("sweeper",),
}
CLIENT_FACTORIES = {"dynamodb": "task_store._client", "sqs": "task_queue._client"}
# The functions carrying this layer also run against Dragonfly 2 schedulers: rows of their own, with
# these variables (a channel to the address is made lazily: nothing listens there, nothing needs to).
GRPC_LAYER = "GrpcLayer"
DEFAULT_TARGET = "dragonfly1"
SCHEDULER_TARGET = "dragonfly2-scheduler"
TARGETS = (DEFAULT_TARGET, SCHEDULER_TARGET)
SCHEDULER_ENVIRONMENT = {"PREHEAT_SUPERNODE_API": SCHEDULER_TARGET, "PREHEAT_SUPERNODES": "127.0.0.1:1"}
# What the gRPC driver imports (preheat.adapters.dragonfly2_scheduler): the scheduler target's own
# share of a cold start, timed after a function's toolkit (grpc_script).
GRPC_IMPORTS = (
    "import grpc\nfrom dragonfly_api import scheduler_pb2, scheduler_pb2_grpc\n"
    "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
)
# The adapters' botocore config (preheat.adapters.dynamodb / sqs): the floor builds its clients alike.
CLIENT_CONFIG = "Config(retries={'mode': 'standard', 'max_attempts': 3}, connect_timeout=2, read_timeout=5)"

# The powertools utilities a function may load, each with what loading it takes (in this order: the
# tracer before its patches), keyed by a module that shows it loaded. A function's "toolkit" is its
# floor plus the pieces its own process loaded: what it pays before a line of the project's code.
LOGGER_PIECE = "aws_lambda_powertools.logging.logger"
POWERTOOLS_PIECES: dict[str, str] = {
    LOGGER_PIECE: ("from aws_lambda_powertools import Logger\nLogger(service='bench')\n"),
    "aws_lambda_powertools.metrics.metrics": (
        "from aws_lambda_powertools import Metrics\nMetrics(namespace='bench', service='bench')\n"
    ),
    "aws_xray_sdk.core": (
        "from aws_lambda_powertools import Tracer\n_tracer = Tracer(service='bench', auto_patch=False)\n"
    ),
    "aws_xray_sdk.ext.botocore.patch": "_tracer.patch(['botocore'])\n",
    "aws_xray_sdk.ext.httplib.patch": "_tracer.patch(['httplib'])\n",
    "aws_lambda_powertools.event_handler": (
        "from aws_lambda_powertools.event_handler import APIGatewayRestResolver\nAPIGatewayRestResolver()\n"
    ),
    "aws_lambda_powertools.utilities.batch": (
        "from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType\n"
        "BatchProcessor(EventType.SQS)\n"
    ),
    "aws_lambda_powertools.utilities.parameters": "import aws_lambda_powertools.utilities.parameters\n",
}

_CHILD_PREAMBLE = """\
import time as _time
_started = _time.perf_counter()
import sys as _sys
"""
# Peak RSS from /proc (VmHWM, this process image's own high-water mark) where there is one:
# getrusage's ru_maxrss survives exec, so a child forked from a big parent reports the parent's size.
PEAK_RSS_KB = """
def _peak_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
_CHILD_REPORT = (
    """
_done = _time.perf_counter()
import json as _json
"""
    + PEAK_RSS_KB
    + """
print(_json.dumps({"seconds": _done - _started, "import_seconds": _imported - _started,
                   "maxrss_kb": _peak_kb(),
                   "loaded": [_m for _m in """
    + repr(list(POWERTOOLS_PIECES))
    + """ if _m in _sys.modules]}))
"""
)


def function_script(spec: FunctionSpec, layer_dirs: Sequence[Path], factories: Sequence[str]) -> str:
    module = spec.handler.rpartition(".")[0]
    paths = [str(spec.code_uri), *(str(path) for path in layer_dirs)]
    calls = "\n".join(
        f"_obj = _bootstrap.{first}()" + "".join(f"\n_obj = _obj.{attribute}" for attribute in rest)
        for first, *rest in (factory.split(".") for factory in factories)
    )
    return (
        _CHILD_PREAMBLE
        + f"_sys.path[:0] = {paths!r}\n"
        + "import importlib as _importlib\n"
        + f"_handler = getattr(_importlib.import_module({module!r}), {spec.handler_name!r})\n"
        + "_imported = _time.perf_counter()\n"
        # The composition root only where the function reaches it: a handler that builds nothing
        # (the authorizer, the OpenAPI document) never imports it, nor its tracer.
        + ("from preheat import bootstrap as _bootstrap\n" if factories else "")
        + calls
        + _CHILD_REPORT
    )


def toolkit_script(services: Sequence[str], loaded: Sequence[str]) -> str:
    """The floor, then the powertools utilities a function loaded (``loaded``: keys of
    ``POWERTOOLS_PIECES``), built as the function builds them: what it pays before its own code."""
    # A floor without clients has built its Logger already.
    skip = set() if services else {LOGGER_PIECE}
    pieces = "".join(
        code for piece, code in POWERTOOLS_PIECES.items() if piece in loaded and piece not in skip
    )
    return floor_script(services).removesuffix(_CHILD_REPORT) + "\n" + pieces + _CHILD_REPORT


def grpc_script(services: Sequence[str], loaded: Sequence[str]) -> str:
    """A function's toolkit (:func:`toolkit_script`), then the gRPC driver's imports, the clock
    started once the toolkit is built: what importing gRPC adds where the function imports it."""
    toolkit = toolkit_script(services, loaded).removesuffix(_CHILD_REPORT)
    return (
        toolkit
        + "\n_started = _time.perf_counter()\n"
        + GRPC_IMPORTS
        + "_imported = _time.perf_counter()\n"
        + _CHILD_REPORT
    )


def floor_script(services: Sequence[str]) -> str:
    """The floor of a function: what any Python Lambda doing the same must load. With AWS clients,
    botocore and the same clients built from one session (what the adapters use; boto3 would add its
    resource layer and s3transfer, which no function loads); without, the powertools Logger every
    handler of this kind starts with."""
    if not services:
        return (
            _CHILD_PREAMBLE
            + "from aws_lambda_powertools import Logger\n"
            + "_imported = _time.perf_counter()\n"
            + "Logger()\n"
            + _CHILD_REPORT
        )
    clients = "\n".join(
        f"_session.create_client({service!r}, config={CLIENT_CONFIG})" for service in services
    )
    return (
        _CHILD_PREAMBLE
        + "import botocore.session\nfrom botocore.config import Config\n"
        + "_imported = _time.perf_counter()\n"
        + "_session = botocore.session.get_session()\n"
        + clients
        + _CHILD_REPORT
    )


def floor_text(services: Sequence[str]) -> str:
    if not services:
        return "import the powertools Logger, build one"
    return f"import botocore, build {', '.join(services)} from one session"


# -- what each function is --------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    logical_id: str
    spec: FunctionSpec
    layer_dirs: tuple[Path, ...]
    services: tuple[str, ...]
    factories: tuple[str, ...]
    environment: dict[str, str]
    target: str = DEFAULT_TARGET

    @property
    def floor_key(self) -> str:
        return "+".join(self.services) or "none"

    @property
    def key(self) -> str:
        """The row's name in the results: the logical id, ``<id>@<target>`` for a target's row."""
        return self.logical_id if self.target == DEFAULT_TARGET else f"{self.logical_id}@{self.target}"

    @property
    def label(self) -> str:
        name = self.logical_id.removesuffix("Function")
        return name if self.target == DEFAULT_TARGET else f"{name} (scheduler)"

    @property
    def scheduler(self) -> bool:
        return self.target == SCHEDULER_TARGET


def aws_services(template: Template, logical_id: str) -> tuple[str, ...]:
    """The AWS clients a function builds, read from its IAM policies in the template."""
    policies = json.dumps(
        (template.resources[logical_id].get("Properties") or {}).get("Policies"), default=str
    )
    services = []
    if re.search(r"dynamodb:", policies):
        services.append("dynamodb")
    if re.search(r"sqs:|SQSSendMessagePolicy|SQSPollerPolicy", policies):
        services.append("sqs")
    return tuple(services)


def dummy_resolver(template: Template) -> Resolver:
    resources: dict[str, PhysicalResource] = {}
    for logical_id in template.tables:
        name = f"bench-{logical_id}"
        resources[logical_id] = PhysicalResource(
            logical_id, name, {"Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"}
        )
    for logical_id in template.queues:
        name = f"bench-{logical_id}"
        resources[logical_id] = PhysicalResource(
            logical_id,
            f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}",
            {"Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}", "QueueName": name},
        )
    parameters = template.parameter_values(
        {name: "http://127.0.0.1:9" for name in ("Supernodes",) if name in template.parameters}
    )
    return Resolver(template, parameters, resources, REGION, ACCOUNT)


def carries_grpc(spec: FunctionSpec) -> bool:
    return any(isinstance(layer, Ref) and layer.name == GRPC_LAYER for layer in spec.layers)


def functions_of(
    template: Template, wanted: Sequence[str] | None, targets: Sequence[str] = (DEFAULT_TARGET,)
) -> list[Function]:
    """Every function (or the ``wanted``) with the template's variables; with the scheduler target in
    ``targets``, those carrying the gRPC layer again with its variables, right after."""
    resolver = dummy_resolver(template)
    functions = []
    for logical_id, spec in template.functions.items():
        if wanted and logical_id not in wanted:
            continue
        environment = {}
        for name, value in spec.environment.items():
            try:
                resolved = resolver.resolve_str(value)
            except TemplateError:
                continue  # a value only a deployment has (a secret's name...): the default applies
            if resolved is not None:
                environment[name] = resolved
        services = aws_services(template, logical_id)
        factories = DOMAIN_FACTORIES.get(logical_id, ()) + tuple(CLIENT_FACTORIES[s] for s in services)
        function = Function(logical_id, spec, template.layer_dirs(spec), services, factories, environment)
        if DEFAULT_TARGET in targets:
            functions.append(function)
        if SCHEDULER_TARGET in targets and carries_grpc(spec):
            variables = {**environment, **SCHEDULER_ENVIRONMENT}
            functions.append(replace(function, environment=variables, target=SCHEDULER_TARGET))
    return functions


def base_environment() -> dict[str, str]:
    """The parent's variables minus everything AWS, Lambda, powertools or preheat; plus dummy AWS."""
    prefixes = ("AWS_", "PREHEAT_", "POWERTOOLS_", "LAMBDA_", "_X_AMZN", "PYTHON")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(
        {
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


def lambda_environment(function: Function) -> dict[str, str]:
    return {
        **base_environment(),
        **function.environment,
        "AWS_LAMBDA_FUNCTION_NAME": f"bench-{function.logical_id}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.spec.memory_size),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "LAMBDA_TASK_ROOT": str(function.spec.code_uri),
        "_HANDLER": function.spec.handler,
    }


# -- running them ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    import_seconds: float
    wall_seconds: float
    maxrss_mib: float
    loaded: tuple[str, ...] = ()


def run_child(
    script: str, env: Mapping[str, str], cwd: Path, *, importtime: bool = False
) -> tuple[Sample, str]:
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", script]
    started = time.perf_counter()
    done = subprocess.run(
        command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cold start process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sample = Sample(
        report["seconds"], report["import_seconds"], wall, report["maxrss_kb"] / 1024, tuple(report["loaded"])
    )
    return sample, done.stderr


@dataclass
class Measured:
    by_function: dict[str, list[Sample]]
    by_floor: dict[str, list[Sample]]
    by_toolkit: dict[str, list[Sample]]  # by function: its floor and the powertools it loaded
    loaded: dict[str, tuple[str, ...]]  # by function
    # By scheduler row: the gRPC driver's imports after the row's toolkit (grpc_script).
    grpc: dict[str, list[Sample]] = field(default_factory=dict)


def measure(functions: Sequence[Function], runs: int) -> Measured:
    floors = {function.floor_key: function.services for function in functions}
    floor_env = base_environment()
    # A first run of each function, not counted, names the powertools utilities it loads.
    loaded = {
        function.key: run_child(
            function_script(function.spec, function.layer_dirs, function.factories),
            lambda_environment(function),
            function.spec.code_uri,
        )[0].loaded
        for function in functions
    }
    measured = Measured(
        {function.key: [] for function in functions},
        {key: [] for key in floors},
        {function.key: [] for function in functions},
        loaded,
    )
    for _ in range(runs):
        for function in functions:
            script = function_script(function.spec, function.layer_dirs, function.factories)
            sample, _ = run_child(script, lambda_environment(function), function.spec.code_uri)
            measured.by_function[function.key].append(sample)
            # Under the function's variables: outside Lambda, X-Ray's recorder builds a sampler
            # with a client of its own, which no function pays.
            toolkit = toolkit_script(function.services, loaded[function.key])
            sample, _ = run_child(toolkit, lambda_environment(function), PROJECT_ROOT)
            measured.by_toolkit[function.key].append(sample)
            if function.scheduler:
                script = grpc_script(function.services, loaded[function.key])
                sample, _ = run_child(script, lambda_environment(function), PROJECT_ROOT)
                measured.grpc.setdefault(function.key, []).append(sample)
        for key, services in floors.items():
            sample, _ = run_child(floor_script(services), floor_env, PROJECT_ROOT)
            measured.by_floor[key].append(sample)
    return measured


def diagnose(function: Function, runs: int = DIAGNOSIS_RUNS, top: int = 8) -> dict[str, Any]:
    """:func:`heavy_imports` of ``runs`` runs under ``-X importtime``, each figure their median
    (one run on a busy machine can charge a module with a stall that is not its own)."""
    script = function_script(function.spec, function.layer_dirs, function.factories)
    found = []
    for _ in range(runs):
        _, function_stderr = run_child(
            script, lambda_environment(function), function.spec.code_uri, importtime=True
        )
        _, floor_stderr = run_child(
            floor_script(function.services), base_environment(), PROJECT_ROOT, importtime=True
        )
        found.append(heavy_imports(function_stderr, floor_stderr, top=top * 2))
    names = {name for heavy in found for name in heavy["third_party_ms"]}
    third_party = {name: median(heavy["third_party_ms"].get(name, 0.0) for heavy in found) for name in names}
    slowest = sorted(third_party.items(), key=lambda item: -item[1])[:top]
    return {
        "runs": runs,
        "beyond_floor_ms": round(median(heavy["beyond_floor_ms"] for heavy in found), 1),
        "project_modules_ms": round(median(heavy["project_modules_ms"] for heavy in found), 1),
        "third_party_ms": {name: round(ms, 1) for name, ms in slowest},
    }


# -- the report ---------------------------------------------------------------------------------


def report(
    functions: Sequence[Function],
    measured: Measured,
    runs: int,
    *,
    diagnose_all: bool,
    diagnosis_runs: int = DIAGNOSIS_RUNS,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for function in functions:
        samples = measured.by_function[function.key]
        floor = measured.by_floor[function.floor_key]
        seconds = median(s.seconds for s in samples)
        floor_seconds = median(s.seconds for s in floor)
        toolkit_seconds = median(s.seconds for s in measured.by_toolkit[function.key])
        rss = max(s.maxrss_mib for s in samples)
        floor_rss = max(s.maxrss_mib for s in floor)
        ratio = seconds / floor_seconds
        own_ratio = seconds / toolkit_seconds
        own_ms = (seconds - toolkit_seconds) * 1000
        clients = ", ".join(function.services) or "no AWS client"
        details[function.key] = {
            "target": function.target,
            "handler": f"{function.spec.code_uri.relative_to(PROJECT_ROOT)}/{function.spec.handler}",
            "factories": list(function.factories),
            "floor": floor_text(function.services),
            "median_ms": round(seconds * 1000, 1),
            "median_import_ms": round(median(s.import_seconds for s in samples) * 1000, 1),
            "median_wall_ms": round(median(s.wall_seconds for s in samples) * 1000, 1),
            "floor_median_ms": round(floor_seconds * 1000, 1),
            "floor_median_wall_ms": round(median(s.wall_seconds for s in floor) * 1000, 1),
            "ratio": round(ratio, 3),
            "powertools_loaded": list(measured.loaded[function.key]),
            "toolkit_median_ms": round(toolkit_seconds * 1000, 1),
            "toolkit_ratio": round(toolkit_seconds / floor_seconds, 3),
            "ratio_to_toolkit": round(own_ratio, 3),
            "own_code_ms": round(own_ms, 1),
            "peak_rss_mib": round(rss, 1),
            "floor_peak_rss_mib": round(floor_rss, 1),
            "memory_size_mb": function.spec.memory_size,
            "runs_ms": [round(s.seconds * 1000, 1) for s in samples],
        }
        grpc_note = ""
        if function.scheduler and measured.grpc.get(function.key):
            grpc_ms = median(s.seconds for s in measured.grpc[function.key]) * 1000
            details[function.key]["grpc_import_ms"] = round(grpc_ms, 1)
            details[function.key]["own_code_less_grpc_ms"] = round(own_ms - grpc_ms, 1)
            grpc_note = (
                f"; own includes the gRPC driver's imports ({grpc_ms:.0f} ms after its toolkit: "
                "the scheduler target's own cost, in no floor)"
            )
        name = function.label
        figures[f"{function.key}_vs_toolkit"] = figure(
            round(own_ratio, 3),
            TARGET_TOOLKIT_RATIO,
            "at most",
            "x",
            label=f"cold start {name} / (floor + its powertools)",
            detail=f"{seconds * 1000:.0f} ms vs {toolkit_seconds * 1000:.0f} ms ({clients}); "
            f"{ratio:.2f}x the bare floor ({floor_seconds * 1000:.0f} ms), no target{grpc_note}",
        )
        figures[f"{function.key}_own_code"] = figure(
            round(own_ms, 1),
            TARGET_OWN_CODE_MS,
            "at most",
            "ms",
            label=f"cold start {name}, own code",
            detail="the function less its floor + powertools" + grpc_note,
        )
        figures[f"{function.key}_peak_rss"] = figure(
            round(rss, 1),
            function.spec.memory_size,
            "below",
            "MiB",
            label=f"cold start {name} peak RSS",
            detail=f"floor {floor_rss:.1f} MiB; target: the function's MemorySize",
        )
        missed = own_ratio > TARGET_TOOLKIT_RATIO or own_ms > TARGET_OWN_CODE_MS
        if diagnosis_runs > 0 and (diagnose_all or missed):
            details[function.key]["heavy_imports"] = diagnose(function, diagnosis_runs)
    return {
        "benchmark": NAME,
        "command": "python -m bench.cold_start",
        "setup": {
            "runs": runs,
            "python": sys.version.split()[0],
            "measured": (
                "from the child's first statement to its clients built (interpreter start-up excluded)"
            ),
            "tracing": "on (Lambda's variables set, as with Tracing: Active)",
            "targets": sorted({function.target for function in functions}),
        },
        "functions": details,
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    width = max(len("function"), *(len(key) for key in result["functions"]))
    lines = [
        f"cold start: import the handler and build its clients, median of {result['setup']['runs']} "
        "fresh processes",
        "(+powertools: the floor plus the powertools utilities the function loads, built alike; "
        "vs +pt: the function against it (target 1.15x); own: the function less it (target 30 ms); "
        "ratio: against the bare floor, no target)",
        f"{'function':<{width}} {'median':>9} {'(import)':>9} {'floor':>9} {'ratio':>7} "
        f"{'+powertools':>12} {'vs +pt':>7} {'own':>7} {'RSS':>10} {'floor RSS':>10}",
    ]
    for logical_id, item in result["functions"].items():
        lines.append(
            f"{logical_id:<{width}} {item['median_ms']:>7.0f}ms {item['median_import_ms']:>7.0f}ms "
            f"{item['floor_median_ms']:>7.0f}ms {item['ratio']:>6.2f}x "
            f"{item['toolkit_median_ms']:>5.0f}ms {item['toolkit_ratio']:>4.2f}x "
            f"{item['ratio_to_toolkit']:>6.2f}x {item['own_code_ms']:>5.0f}ms "
            f"{item['peak_rss_mib']:>6.1f} MiB {item['floor_peak_rss_mib']:>6.1f} MiB"
        )
    for key, item in result["functions"].items():
        if "grpc_import_ms" in item:
            lines.append(
                f"{key}: PREHEAT_SUPERNODE_API={SCHEDULER_TARGET}; its own time includes the gRPC "
                f"driver's imports, {item['grpc_import_ms']:g} ms after its toolkit (grpc, dragonfly_api, "
                f"grpc_health), {item['own_code_less_grpc_ms']:g} ms without them"
            )
    for logical_id, item in result["functions"].items():
        heavy = item.get("heavy_imports")
        if heavy:
            lines.append(
                f"{logical_id} imports {heavy['beyond_floor_ms']:g} ms beyond its floor "
                f"(under -X importtime): its own modules {heavy['project_modules_ms']:g} ms, and"
            )
            lines.extend(f"  {ms:>7.1f} ms  {name}" for name, ms in heavy["third_party_ms"].items())
    lines.append("")
    lines.append(table(figure_rows(result["figures"])))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per function (default 10)")
    parser.add_argument("--functions", default="", help="comma-separated logical ids (default: all)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated: {DEFAULT_TARGET} (the template's variables), {SCHEDULER_TARGET} "
        f"(the functions carrying {GRPC_LAYER} again, driving schedulers); default both",
    )
    parser.add_argument(
        "--importtime",
        action="store_true",
        help="name the heavy imports of every function, not only slow ones",
    )
    parser.add_argument(
        "--diagnosis-runs", type=int, default=DIAGNOSIS_RUNS, help="runs under -X importtime (0: none)"
    )
    parser.add_argument("--template", type=Path, default=TEMPLATE, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    wanted = [name.strip() for name in args.functions.split(",") if name.strip()]
    template = Template.load(args.template)
    unknown = set(wanted) - set(template.functions)
    if unknown:
        parser.error(f"no such function in {args.template.name}: {', '.join(sorted(unknown))}")
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not targets or set(targets) - set(TARGETS):
        parser.error(f"--targets: one or both of {', '.join(TARGETS)}")
    functions = functions_of(template, wanted, targets)
    if not functions:
        parser.error("no function to measure (the scheduler target only has those carrying the gRPC layer)")
    result = report(
        functions,
        measure(functions, args.runs),
        args.runs,
        diagnose_all=args.importtime,
        diagnosis_runs=args.diagnosis_runs,
    )
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
