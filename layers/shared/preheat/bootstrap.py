"""The composition root: real adapters wired to the domain, built once per Lambda environment.

Nothing here runs at import time, so tests set the environment (or pass fakes) first. Each adapter
is imported by the factory that builds it: a function pays at cold start only for the adapters it
uses (the status function never loads an HTTP client, the check function never loads botocore's
DynamoDB model), which ``python -m bench.cold_start`` holds to 1.15x of the same function's floor
plus the powertools utilities it loads, and to 30 ms of the project's own code.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

from preheat.observability import trace_calls
from preheat.settings import get_settings

if TYPE_CHECKING:
    from preheat.adapters.dynamodb import DynamoDBTaskStore
    from preheat.adapters.dynamodb_keepwarm import DynamoDBKeepWarmStore
    from preheat.adapters.eventbridge import EventBridgePublisher
    from preheat.adapters.sqs import SqsTaskQueue
    from preheat.gate import Gate
    from preheat.keepwarm import KeepWarmer, Rewarmer
    from preheat.lifecycle import LifecycleService
    from preheat.ports import EventPublisher, SupernodeDriver
    from preheat.service import PreheatService
    from preheat.sweeper import Sweeper
    from preheat.worker import Worker

# The imports inside the factories are deliberate (see above).
# ruff: noqa: PLC0415


@functools.cache
def task_store() -> DynamoDBTaskStore:
    from preheat.adapters.dynamodb import DynamoDBTaskStore

    trace_calls("botocore")
    return DynamoDBTaskStore(get_settings())


@functools.cache
def task_queue() -> SqsTaskQueue:
    from preheat.adapters.sqs import SqsTaskQueue

    trace_calls("botocore")
    return SqsTaskQueue(get_settings())


@functools.cache
def eventbridge_publisher() -> EventBridgePublisher:
    """Completion and re-warm events; its client is built on the first event, not at cold start."""
    from preheat.adapters.eventbridge import EventBridgePublisher

    trace_calls("botocore")
    return EventBridgePublisher(get_settings())


@functools.cache
def keep_warm_store() -> DynamoDBKeepWarmStore:
    from preheat.adapters.dynamodb_keepwarm import DynamoDBKeepWarmStore

    return DynamoDBKeepWarmStore(get_settings())


@functools.cache
def event_publisher() -> EventPublisher:
    """What every end of a task calls: its completion event, then its Step Functions callback
    (preheat.callbacks). The Step Functions client is built on the first token answered."""
    from preheat.adapters.stepfunctions import StepFunctionsCallbacks
    from preheat.callbacks import CallbackPublisher

    return CallbackPublisher(eventbridge_publisher(), StepFunctionsCallbacks(), keep_warm_store())


@functools.cache
def gate() -> Gate:
    from preheat.gate import Gate

    return Gate(preheat_service(), lifecycle_service())


@functools.cache
def keep_warmer() -> KeepWarmer:
    """The sweeper's keep-warm checks. The driver (and, for schedulers, gRPC) is built by the first
    check that is due, not by every sweep: most sweeps find none."""
    from preheat.keepwarm import KeepWarmer, LazyLifecycle

    return KeepWarmer(
        task_store(),
        keep_warm_store(),
        *LazyLifecycle.of(lifecycle_service, rewarmer),
        eventbridge_publisher(),
    )


def rewarmer() -> Rewarmer:
    from preheat.keepwarm import DriverRewarmer

    return DriverRewarmer(supernode_driver(), evict_first=get_settings().supernode_api == "dragonfly1")


@functools.cache
def supernode_driver() -> SupernodeDriver:
    settings = get_settings()
    if settings.supernode_api == "dragonfly2-scheduler":
        # gRPC is loaded here and only here: the worker and the check function pay for it, no other.
        from preheat.adapters.dragonfly2_scheduler import Dragonfly2SchedulerDriver

        return Dragonfly2SchedulerDriver(settings)
    if settings.supernode_api == "dragonfly2":
        from preheat.adapters.dragonfly2 import Dragonfly2Driver

        trace_calls("httplib", "botocore")  # botocore: the token may come from Secrets Manager
        return Dragonfly2Driver(settings)
    from preheat.adapters.dragonfly1 import Dragonfly1Driver

    trace_calls("httplib")
    return Dragonfly1Driver(settings)


def dedup_key() -> bytes:
    """The key of the hash that lets identical requests share a task without storing credentials."""
    settings = get_settings()
    if settings.dedup_key_secret:
        # Imported on demand: only the functions that submit tasks read it (cached for an hour).
        from aws_lambda_powertools.utilities.parameters import get_secret

        value = get_secret(settings.dedup_key_secret, max_age=3600)
        return value.encode() if isinstance(value, str) else bytes(value)
    if settings.dedup_key:
        return settings.dedup_key.encode()
    # Without a key the claims still work; they are merely no stronger than a plain hash.
    return f"preheat-unkeyed:{settings.table_name}".encode()


@functools.cache
def preheat_service() -> PreheatService:
    from preheat.service import PreheatService

    return PreheatService(
        task_store(), task_queue(), get_settings(), dedup_key=dedup_key, events=event_publisher()
    )


@functools.cache
def lifecycle_service() -> LifecycleService:
    """Verify and evict (see preheat.lifecycle); it loads the driver, so only the functions that
    serve those routes (and keep-warm) pay for one."""
    from preheat.lifecycle import LifecycleService

    return LifecycleService(task_store(), supernode_driver(), get_settings(), events=event_publisher())


@functools.cache
def worker() -> Worker:
    from preheat.adapters.credentials import AwsCredentialStore
    from preheat.adapters.registry import HttpRegistryClient
    from preheat.worker import Worker

    trace_calls("httplib", "botocore")
    settings = get_settings()
    return Worker(
        task_store(),
        task_queue(),
        HttpRegistryClient(settings),
        supernode_driver(),
        settings,
        credentials=AwsCredentialStore(settings),
        events=event_publisher(),
    )


@functools.cache
def sweeper() -> Sweeper:
    from preheat.sweeper import Sweeper

    return Sweeper(task_store(), task_queue(), event_publisher(), get_settings())


def reset_execution_environment() -> None:
    """Forget every built object, as a new Lambda execution environment would (the local stack
    calls it when it starts; tests when they change the environment)."""
    get_settings.cache_clear()
    # A new environment has a new botocore session (the local stack's tests hook its events).
    aws = sys.modules.get("preheat.adapters.aws")
    if aws is not None:
        aws.session.cache_clear()
    for factory in (
        task_store,
        task_queue,
        eventbridge_publisher,
        keep_warm_store,
        event_publisher,
        keep_warmer,
        gate,
        supernode_driver,
        preheat_service,
        lifecycle_service,
        worker,
        sweeper,
    ):
        factory.cache_clear()
    # powertools' get_secret keeps its Secrets Manager client (and what it read) for the process.
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters.constants")
    if parameters is not None:
        parameters.DEFAULT_PROVIDERS.clear()
