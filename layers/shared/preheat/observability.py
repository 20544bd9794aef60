"""The powertools Logger, Tracer and Metrics every function shares (service name and namespace
come from POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="preheat")

if TYPE_CHECKING:
    tracer: Tracer
    metrics: Metrics


@functools.cache
def _tracer() -> Tracer:
    # Nothing is patched up front: X-Ray's default patches every library it knows, importing each
    # (botocore, requests, sqlite3...) into every function's cold start, used or not. The
    # composition root patches a library when it builds the adapter that uses it (``trace_calls``).
    return Tracer(service="preheat", auto_patch=False)


@functools.cache
def _metrics() -> Metrics:
    return Metrics(namespace="DragonflyPreheat", service="preheat")


def __getattr__(name: str) -> Any:
    """``tracer`` and ``metrics``, built when a module first asks for them: with tracing on, a
    Tracer loads the X-Ray SDK (tens of milliseconds), which the API key authorizer, using the
    logger only, never needs at its cold start."""
    if name == "tracer":
        return _tracer()
    if name == "metrics":
        return _metrics()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# At DEBUG, botocore logs every request's parameters, and the worker's first message carries the
# caller's credentials in its body: however verbose an operator makes the service, botocore stays
# at INFO so credentials never reach a log.
for _name in ("botocore", "boto3"):
    logging.getLogger(_name).setLevel(max(logging.getLogger(_name).level, logging.INFO))


def trace_calls(*libraries: str) -> None:
    """Trace the calls made through ``libraries`` ("botocore"; "httplib" for the HTTP adapters, which
    X-Ray traces below urllib3, leaving botocore's own connections out). Once is enough, and
    repeating it is harmless. Called as the adapters using them are built, which loads them anyway."""
    tracer = _tracer()
    tracer.patch(modules=libraries)
    if "httplib" in libraries and not tracer.disabled:
        # botocore's calls go through http.client too: traced once, by the botocore patch, which
        # names the service and operation.
        from aws_xray_sdk.ext.httplib import add_ignored  # noqa: PLC0415 - loaded only when tracing

        add_ignored(subclass="botocore.awsrequest.AWSHTTPConnection")
