"""The composition root: real adapters wired to the domain, built once per Lambda environment.

Nothing here runs at import time, so tests set the environment (or pass fakes) first.
"""

from __future__ import annotations

import functools
import sys

from preheat.adapters.credentials import AwsCredentialStore
from preheat.adapters.dragonfly1 import Dragonfly1Driver
from preheat.adapters.dynamodb import DynamoDBTaskStore
from preheat.adapters.registry import HttpRegistryClient
from preheat.adapters.sqs import SqsTaskQueue
from preheat.ports import SupernodeDriver
from preheat.service import PreheatService
from preheat.settings import get_settings
from preheat.worker import Worker


@functools.cache
def task_store() -> DynamoDBTaskStore:
    return DynamoDBTaskStore(get_settings())


@functools.cache
def task_queue() -> SqsTaskQueue:
    return SqsTaskQueue(get_settings())


@functools.cache
def supernode_driver() -> SupernodeDriver:
    settings = get_settings()
    if settings.supernode_api == "dragonfly2":
        # Imported on demand: a Dragonfly 1 deployment never pays for it at cold start.
        from preheat.adapters.dragonfly2 import Dragonfly2Driver  # noqa: PLC0415

        return Dragonfly2Driver(settings)
    return Dragonfly1Driver(settings)


def dedup_key() -> bytes:
    """The key of the hash that lets identical requests share a task without storing credentials."""
    settings = get_settings()
    if settings.dedup_key_secret:
        # Imported on demand: only the functions that submit tasks read it (cached for an hour).
        from aws_lambda_powertools.utilities.parameters import get_secret  # noqa: PLC0415

        value = get_secret(settings.dedup_key_secret, max_age=3600)
        return value.encode() if isinstance(value, str) else bytes(value)
    if settings.dedup_key:
        return settings.dedup_key.encode()
    # Without a key the claims still work; they are merely no stronger than a plain hash.
    return f"preheat-unkeyed:{settings.table_name}".encode()


@functools.cache
def preheat_service() -> PreheatService:
    return PreheatService(task_store(), task_queue(), get_settings(), dedup_key=dedup_key)


@functools.cache
def worker() -> Worker:
    settings = get_settings()
    return Worker(
        task_store(),
        task_queue(),
        HttpRegistryClient(settings),
        supernode_driver(),
        settings,
        credentials=AwsCredentialStore(settings),
    )


def reset_execution_environment() -> None:
    """Forget every built object, as a new Lambda execution environment would (the local stack
    calls it when it starts; tests when they change the environment)."""
    get_settings.cache_clear()
    for factory in (task_store, task_queue, supernode_driver, preheat_service, worker):
        factory.cache_clear()
    # powertools' get_secret keeps its Secrets Manager client (and what it read) for the process.
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters.constants")
    if parameters is not None:
        parameters.DEFAULT_PROVIDERS.clear()
