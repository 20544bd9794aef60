"""The powertools Logger, Tracer and Metrics every function shares (service name and namespace
come from POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="preheat")
tracer = Tracer(service="preheat")
metrics = Metrics(namespace="DragonflyPreheat", service="preheat")
