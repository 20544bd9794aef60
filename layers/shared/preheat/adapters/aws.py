"""AWS clients, all from one botocore session per execution environment.

botocore rather than boto3: the adapters use low-level clients only, which boto3 merely wraps, and
importing boto3 also imports s3transfer and its resource framework, ~15 ms of every cold start
(``python -m bench.cold_start`` measures it). One session, because each new session loads the
service models and endpoint data again; built on first use, so a function that never calls AWS
never pays for it.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

# Bounded, so that an unreachable endpoint fails a step within seconds rather than a Lambda's timeout.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)

# Creating clients from one session is not thread-safe in botocore (it mutates the session's
# loaders and caches), and the worker's threads may build the ECR client of another region.
_CREATING = threading.Lock()


@functools.cache
def session() -> botocore.session.Session:
    """The session every adapter's client comes from: the place to hook botocore's events."""
    return botocore.session.get_session()


def client(service: str, *, region: str | None = None, config: Config = CLIENT_CONFIG) -> Any:
    """A low-level client for ``service``; the region, credentials and endpoint (``AWS_ENDPOINT_URL``)
    come from the environment as they would for boto3."""
    with _CREATING:
        return session().create_client(service, region_name=region, config=config)


def reason(exc: Exception) -> str:
    """An AWS call's failure as a caller may read it: the error's code
    (``ProvisionedThroughputExceededException``, or the HTTP status of an answer that was not the
    service's), else the exception's type; never its message, which can be a whole HTML error page
    and reaches the caller of the API."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "error")
    return type(exc).__name__
