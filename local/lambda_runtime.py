"""Runs the template's Lambda handlers in this Python process: the Docker-free stand-in for ``sam local``.

Environment: every function runs in this one process, so they share one ``os.environ``. It holds the
union of the functions' template variables (Globals merged with each function's own, ``!Ref``/``!GetAtt``
resolved to local parameter values and moto resources) plus the local AWS values below. Two functions
that need different values for one variable cannot share a process, so that fails loudly
(:class:`EnvConflictError`) instead of one silently seeing the other's value.

A new :class:`LambdaRuntime` calls ``reset_execution_environment()`` of each loaded layer module that
has one, so its environments start without the caches an earlier stack in this process built (as new
Lambda environments would). The modules themselves stay loaded: code outside the stack holds their
classes, and a reloaded module would make a second class of each of its exceptions.

Execution environments: like Lambda, one environment runs one invocation at a time, and a busy
function gets another environment (a cold start: its ``app.py`` loaded again under a new module name),
so module globals (a powertools resolver, a boto3 resource) are never shared between concurrent
invocations. The layer's modules (``preheat``) are imported once and shared by a runtime's environments.

Concurrent API calls: powertools' API resolvers keep the request being resolved in two attributes of
their common base class, ``BaseRouter.current_event`` and ``BaseRouter.lambda_context``, assigned on
the class by every ``resolve()``: state of the whole process, harmless in Lambda, where a process
serves one invocation at a time, but here every environment shares it. The runtime gives those two
attributes one value per invocation instead (:func:`isolate_api_resolvers`: each invocation runs in
a context of its own, and the attributes live in a ``ContextVar``), so concurrent requests run side
by side, as in Lambda's many environments, and never read each other's events. Everything else a
resolver holds (its routing context, middlewares, routes) belongs to its instance, and so to one
environment. What the layer's modules hold stays shared, as it is by the worker's concurrent batches:
the powertools Logger's appended keys and the Metrics set of ``preheat.observability``
(log lines and metrics only, never a request or its answer).
"""

from __future__ import annotations

import contextvars
import decimal
import importlib.util
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.aws import DEFAULT_NAME_PREFIX, LOCAL_ACCOUNT_ID, LOCAL_REGION, physical_name
from local.template import FunctionSpec, PhysicalResource, Resolver, Template, TemplateError

log = logging.getLogger("local.lambda")

# Variables that could send a handler's AWS calls anywhere but the local moto, or make boto3 read
# ~/.aws: removed while the local stack runs.
_UNSAFE_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_UNSAFE_AWS_PREFIXES = ("AWS_ENDPOINT_URL_",)  # per-service endpoints beat AWS_ENDPOINT_URL
# The request state powertools' API resolvers keep on their base class (see isolate_api_resolvers).
_RESOLVER_REQUEST_ATTRIBUTES = ("current_event", "lambda_context")
_ISOLATING = threading.Lock()


class EnvConflictError(RuntimeError):
    """Two functions need different values for one variable, which one shared process cannot give."""


class HandlerLoadError(RuntimeError):
    """The function's handler file or handler function is missing, or its module failed to import."""


class InvocationTimeout(RuntimeError):
    """The handler ran past its template ``Timeout``: Lambda would have stopped it and failed the call."""


class MarshalError(TypeError):
    """The handler returned something Lambda could not serialize to JSON (``Runtime.MarshalError``)."""


def local_aws_environment(endpoint_url: str) -> dict[str, str]:
    """What every function sees locally besides its template variables."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": LOCAL_REGION,
        "AWS_REGION": LOCAL_REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        # Nothing from ~/.aws (profiles, per-service endpoint_url) may redirect or authenticate calls.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # No X-Ray daemon here; metrics would only print EMF blobs among the logs (powertools >= 3.x
        # honours POWERTOOLS_METRICS_DISABLED).
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }


def function_environment(
    spec: FunctionSpec, resolver: Resolver, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """One function's template variables as strings; an override skips resolving that variable."""
    overrides = overrides or {}
    env: dict[str, str] = {}
    for name, value in spec.environment.items():
        if name in overrides:
            env[name] = overrides[name]
            continue
        try:
            resolved = resolver.resolve_str(value)
        except TemplateError as exc:
            raise TemplateError(f"{spec.logical_id}: {name}: {exc}") from None
        if resolved is not None:
            env[name] = resolved
    return env


def union_environment(
    template: Template, resolver: Resolver, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every function's variables in one mapping, plus ``overrides`` (which win everywhere)."""
    union: dict[str, str] = {}
    owners: dict[str, str] = {}
    for spec in template.functions.values():
        for name, value in function_environment(spec, resolver, overrides).items():
            if name in union and union[name] != value:
                raise EnvConflictError(
                    f"{name} is {union[name]!r} for {owners[name]} but {value!r} for {spec.logical_id}; "
                    "all functions share one process locally, so they must agree"
                )
            union[name] = value
            owners.setdefault(name, spec.logical_id)
    return {**union, **(overrides or {})}


def template_variable_names(template: Template) -> set[str]:
    return {name for spec in template.functions.values() for name in spec.environment}


class EnvironmentPatch:
    """Applies variables to ``os.environ`` (dropping the unsafe AWS ones) and puts everything back."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._saved: dict[str, str | None] | None = None

    def apply(self) -> None:
        if self._saved is not None:
            return
        unsafe = [
            name
            for name in os.environ
            if name in _UNSAFE_AWS_VARIABLES or name.startswith(_UNSAFE_AWS_PREFIXES)
        ]
        self._saved = {name: os.environ.get(name) for name in [*self._env, *unsafe]}
        for name in unsafe:
            del os.environ[name]
        os.environ.update(self._env)

    def restore(self) -> None:
        if self._saved is None:
            return
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved = None


@dataclass
class LambdaContext:
    """The handler's ``context``, with the attributes of the Python runtime's own object."""

    function_name: str
    memory_limit_in_mb: str  # a string in the real runtime too (read from AWS_LAMBDA_FUNCTION_MEMORY_SIZE)
    invoked_function_arn: str
    timeout_seconds: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        self.log_stream_name = self.log_stream_name or f"local/[$LATEST]{uuid.uuid4().hex}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _lambda_json_default(value: Any) -> Any:
    # The Python runtime's marshaller turns Decimal (what DynamoDB numbers come back as) into float.
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


Handler = Callable[[Any, Any], Any]
_module_counter = itertools.count(1)


RESET_HOOK = "reset_execution_environment"


def reset_modules_under(directories: Iterable[Path]) -> list[str]:
    """Call ``reset_execution_environment()`` of every loaded module from ``directories`` that has one.

    The modules stay loaded: code outside the stack (tests, tools) holds their classes, and a second
    copy of a module would make two classes of one exception that do not catch each other. Their
    caches are what a new execution environment must not inherit.
    """
    roots = [d.resolve() for d in directories]
    reset = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        hook = getattr(module, RESET_HOOK, None)
        if file and callable(hook) and any(Path(file).resolve().is_relative_to(root) for root in roots):
            hook()
            reset.append(name)
    return reset


def load_handler(spec: FunctionSpec, layer_dirs: Iterable[Path]) -> Handler:
    """Import the function's handler module afresh, under a name no other function or environment uses
    (every function's module is ``app.py``, so its own name would collide in ``sys.modules``)."""
    path = spec.handler_file
    if not path.is_file():
        raise HandlerLoadError(f"{spec.logical_id}: handler file {path} does not exist")
    for layer_dir in layer_dirs:
        # The layer's content is what Lambda puts on the path (/opt/python) for every function.
        if str(layer_dir) not in sys.path:
            sys.path.insert(0, str(layer_dir))
    module_name = f"_local_lambda_{spec.logical_id}_{next(_module_counter)}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise HandlerLoadError(f"{spec.logical_id}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running it, as a normal import would be (dataclasses and pickling look it up).
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise HandlerLoadError(f"{spec.logical_id}: importing {path} failed: {exc!r}") from exc
    handler = getattr(module, spec.handler_name, None)
    if not callable(handler):
        raise HandlerLoadError(f"{spec.logical_id}: {path} has no callable {spec.handler_name}")
    log.info("cold start %s (%s)", spec.logical_id, module_name)
    return handler  # type: ignore[no-any-return]


class _PerInvocation:
    """An attribute whose value belongs to the invocation (the ``contextvars`` context) that set it;
    read where none was set, it is missing, as the class attribute it replaces was before the first
    ``resolve()``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._value: contextvars.ContextVar[Any] = contextvars.ContextVar(f"local.lambda.{name}")

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        try:
            return self._value.get()
        except LookupError:
            raise AttributeError(self._name) from None

    def __set__(self, instance: Any, value: Any) -> None:
        self._value.set(value)


def isolate_api_resolvers() -> bool:
    """Give powertools' ``BaseRouter.current_event`` and ``lambda_context`` one value per invocation.

    ``resolve()`` assigns them on the class (``BaseRouter.current_event = ...``) and routes read them
    through their resolver or router instance. Both ways now reach the same per-invocation value: a
    descriptor in ``BaseRouter``'s own namespace serves the instances, and the same descriptor on a
    metaclass made for ``BaseRouter`` alone serves (and catches) the assignments on the class. Within
    one invocation nothing changes. Idempotent; False when powertools is not installed (then no
    handler can share its state).
    """
    try:
        from aws_lambda_powertools.event_handler.api_gateway import BaseRouter  # noqa: PLC0415
    except ImportError:
        return False
    with _ISOLATING:
        metaclass = type(BaseRouter)
        if getattr(metaclass, "_local_per_invocation", False):
            return True
        descriptors = {name: _PerInvocation(name) for name in _RESOLVER_REQUEST_ATTRIBUTES}
        # In the class's namespace first: once the metaclass has them, an assignment on the class
        # would set the value instead of installing the descriptor.
        for name, descriptor in descriptors.items():
            type.__setattr__(BaseRouter, name, descriptor)
        isolated = type(
            f"PerInvocation{metaclass.__name__}",
            (metaclass,),
            {"__slots__": (), "_local_per_invocation": True, **descriptors},
        )
        # A class's class can be replaced by a subclass of it (same layout); mypy takes the
        # attribute for the method that reads it.
        BaseRouter.__class__ = isolated  # type: ignore[method-assign]
    return True


class _FunctionPool:
    """Idle execution environments (loaded handlers) of one function."""

    def __init__(self, spec: FunctionSpec, layer_dirs: tuple[Path, ...]) -> None:
        self._spec = spec
        self._layer_dirs = layer_dirs
        self._idle: list[Handler] = []
        self._lock = threading.Lock()

    def acquire(self) -> Handler:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return load_handler(self._spec, self._layer_dirs)

    def release(self, handler: Handler) -> None:
        with self._lock:
            self._idle.append(handler)


class LambdaRuntime:
    """Invokes the template's functions by logical id. The environment must already be applied."""

    def __init__(
        self,
        template: Template,
        *,
        name_prefix: str = DEFAULT_NAME_PREFIX,
        region: str = LOCAL_REGION,
        account_id: str = LOCAL_ACCOUNT_ID,
    ) -> None:
        self.template = template
        self._name_prefix = name_prefix
        self._region = region
        self._account_id = account_id
        self._pools = {
            logical_id: _FunctionPool(spec, template.layer_dirs(spec))
            for logical_id, spec in template.functions.items()
        }
        # New execution environments start without the layer's caches (settings, clients built from
        # AWS_ENDPOINT_URL) of an earlier stack in this process.
        reset_modules_under({d for spec in template.functions.values() for d in template.layer_dirs(spec)})
        # API calls then run side by side, as in Lambda's separate environments.
        isolate_api_resolvers()

    def function_name(self, logical_id: str) -> str:
        return physical_name(self._name_prefix, logical_id)

    def function_resources(self) -> dict[str, PhysicalResource]:
        """What ``!Ref``/``!GetAtt`` of the functions give locally."""
        return {
            logical_id: PhysicalResource(
                logical_id, self.function_name(logical_id), {"Arn": self._arn(logical_id)}
            )
            for logical_id in self.template.functions
        }

    def _arn(self, logical_id: str) -> str:
        return f"arn:aws:lambda:{self._region}:{self._account_id}:function:{self.function_name(logical_id)}"

    def missing_handlers(self) -> list[str]:
        return [
            f"{logical_id}: {spec.handler_file}"
            for logical_id, spec in self.template.functions.items()
            if not spec.handler_file.is_file()
        ]

    def invoke(self, logical_id: str, event: Mapping[str, Any]) -> Any:
        """Call the function like Lambda does: JSON in, JSON out, a fresh context per call.

        The handler's exception propagates as is (the caller decides what Lambda's caller would do).
        """
        spec = self.template.functions.get(logical_id)
        if spec is None:
            raise KeyError(f"no function {logical_id!r} in {self.template.path}")
        payload = json.loads(json.dumps(event))  # the handler gets its own copy, as over the wire
        context = LambdaContext(
            function_name=self.function_name(logical_id),
            memory_limit_in_mb=str(spec.memory_size),
            invoked_function_arn=self._arn(logical_id),
            timeout_seconds=spec.timeout,
        )
        pool = self._pools[logical_id]
        handler = pool.acquire()
        started = time.monotonic()
        try:
            # A context of its own: what the invocation keeps in context variables (powertools'
            # current request, see isolate_api_resolvers) is not seen by any other.
            result = contextvars.copy_context().run(handler, payload, context)
        finally:
            pool.release(handler)
            elapsed = time.monotonic() - started
            log.debug("invoked %s requestId=%s ms=%.1f", logical_id, context.aws_request_id, elapsed * 1000)
        if elapsed > spec.timeout:
            # Threads cannot be stopped, so the limit is checked after the fact; the result is dropped
            # as Lambda would drop it, so a too-slow handler fails locally as it would when deployed.
            raise InvocationTimeout(f"{logical_id} ran {elapsed:.1f}s, over its Timeout of {spec.timeout}s")
        try:
            return json.loads(json.dumps(result, default=_lambda_json_default))
        except (TypeError, ValueError) as exc:
            raise MarshalError(f"{logical_id} returned a value that is not JSON: {exc}") from exc
