"""The powertools Logger, Tracer and Metrics every function shares (service name and namespace
come from POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE)."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="preheat")
tracer = Tracer(service="preheat")
metrics = Metrics(namespace="DragonflyPreheat", service="preheat")

# At DEBUG, botocore logs every request's parameters, and the worker's first message carries the
# caller's credentials in its body: however verbose an operator makes the service, botocore stays
# at INFO so credentials never reach a log.
for _name in ("botocore", "boto3"):
    logging.getLogger(_name).setLevel(max(logging.getLogger(_name).level, logging.INFO))
