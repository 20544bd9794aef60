"""A moto server on 127.0.0.1 holding the template's DynamoDB tables, SQS queues and Secrets
Manager secrets.

They are created from their own ``Properties`` in ``template.yaml`` (through :mod:`local.template`),
so a change to the template is a change to the local stack.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import socket
import threading
from collections import defaultdict
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import boto3
import requests
from botocore.config import Config

from local.template import PhysicalResource, QueueSpec, Resolver, TableSpec, Template, TemplateError

log = logging.getLogger("local.aws")

SECRET_TYPE = "AWS::SecretsManager::Secret"  # noqa: S105  (a resource type, not a secret)
LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_NAME_PREFIX = "preheat-local"

# Dummy credentials: moto accepts anything, and real ones must never be needed (or leaked) locally.
LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}

# CloudFormation's SSESpecification speaks SSEEnabled, the DynamoDB API speaks Enabled.
_SSE_KEYS = {"SSEEnabled": "Enabled", "SSEType": "SSEType", "KMSMasterKeyId": "KMSMasterKeyId"}
# Table properties CreateTable takes under the same name as CloudFormation.
_CREATE_TABLE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "BillingMode",
    "ProvisionedThroughput",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "StreamSpecification",
    "TableClass",
    "DeletionProtectionEnabled",
)
# Queue properties that are not queue attributes.
_NOT_QUEUE_ATTRIBUTES = frozenset({"QueueName", "Tags"})


class _DynamoDBOneAtATime:
    """WSGI middleware over moto's app: DynamoDB requests one at a time, others side by side.

    moto's DynamoDB is not thread-safe where DynamoDB is: a transaction deep-copies the tables it
    names while concurrent writes change them ("dictionary changed size during iteration", then an
    HTTP 500), which lost requests of a burst. SQS stays concurrent: its long polls wait inside moto.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return self._app(environ, start_response)
        with self._lock:
            answer = self._app(environ, start_response)
            try:
                # Read within the lock: a WSGI body may be produced as it is iterated.
                return [b"".join(answer)]
            finally:
                close = getattr(answer, "close", None)
                if close is not None:
                    close()


class _TransactionBackups:
    """Stands in for the ``copy`` module inside ``moto.dynamodb.models`` (see
    :func:`cheap_transaction_backups`): ``deepcopy`` of a table during a transaction is a backup
    of what the transaction can change; anything else is copied as ``copy`` would."""

    def __init__(self, real: Any) -> None:
        self._real = real
        # Per table name, the (hash, range) keys the running transaction names; None outside one.
        self.touched: dict[str, list[tuple[Any, Any]]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table  # noqa: PLC0415

        if self.touched is None or not isinstance(value, Table):
            return self._real.deepcopy(value, memo)
        backup = self._real.copy(value)
        items = defaultdict(dict, value.items)
        if value.range_key_attr is not None:
            items = defaultdict(dict, {key: dict(ranges) for key, ranges in value.items.items()})
        # An Update changes its item in place: those the transaction names are copied whole.
        for hash_value, range_value in self.touched.get(value.name, ()):
            if range_value is None and hash_value in items:
                items[hash_value] = self._real.deepcopy(items[hash_value])
            elif range_value is not None and range_value in items.get(hash_value, {}):
                items[hash_value][range_value] = self._real.deepcopy(items[hash_value][range_value])
        backup.items = items
        return backup


_BACKUPS_INSTALLED = threading.Lock()


def cheap_transaction_backups() -> None:
    """Make moto's TransactWriteItems cost what DynamoDB's does, whatever the table's size.

    moto backs up every table a transaction names with ``copy.deepcopy`` before applying it, to
    roll back should an item fail: 76 ms at 2000 items where a PutItem takes 2 ms, and growing with
    every task the local stack keeps. Its DynamoDB requests are served one at a time
    (:class:`_DynamoDBOneAtATime`), so a backup needs to keep only what the transaction itself can
    change: the table's map of items (copied, its items shared) and the items it names (copied
    whole). Idempotent.
    """
    from moto.dynamodb import models  # noqa: PLC0415
    from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: PLC0415

    with _BACKUPS_INSTALLED:
        current = getattr(models, "copy")  # noqa: B009 - the module's import of copy, not an export
        if isinstance(current, _TransactionBackups):
            return
        backups = _TransactionBackups(current)
        original = models.DynamoDBBackend.transact_write_items

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
            touched: dict[str, list[tuple[Any, Any]]] = {}
            for entry in transact_items:
                for operation, detail in entry.items():
                    table = self.tables.get(detail.get("TableName"))
                    if table is None:
                        continue
                    key = detail.get("Item") if operation == "Put" else detail.get("Key")
                    key = key or {}
                    hash_value = key.get(table.hash_key_attr)
                    range_value = key.get(table.range_key_attr) if table.range_key_attr else None
                    touched.setdefault(table.name, []).append(
                        (
                            DynamoType(hash_value) if hash_value else None,
                            DynamoType(range_value) if range_value else None,
                        )
                    )
            backups.touched = touched
            try:
                original(self, transact_items)
            finally:
                backups.touched = None

        # moto's own names, replaced: the module's ``copy`` and the backend's method.
        setattr(models, "copy", backups)  # noqa: B010
        setattr(models.DynamoDBBackend, "transact_write_items", transact_write_items)  # noqa: B010


_INDEX_QUERIES_INSTALLED = threading.Lock()
_UNSORTED = threading.local()


def cheap_index_queries() -> None:
    """Spare moto's index queries a sort of the whole table.

    Before every query moto lists the table's items sorted by the table's key (comparing them
    through its attribute types: 0.1 to 0.3 s at 10,000 items), and an index query then sorts what
    matches by the index's key and the table's key, a total order: the first sort cannot change its
    answer, only its cost (the listing's 8 shard queries a page). Table queries and scans keep it.
    Idempotent.
    """
    from moto.dynamodb.models.table import Table  # noqa: PLC0415

    with _INDEX_QUERIES_INSTALLED:
        if getattr(Table.query, "_skips_table_sort", False):
            return
        original_query = Table.query
        original_all_items = Table.all_items

        def all_items(self: Any) -> Any:
            if not getattr(_UNSORTED, "on", False):
                return original_all_items(self)
            if self.range_key_attr:
                return [item for ranges in self.items.values() for item in ranges.values()]
            return list(self.items.values())

        def query(self: Any, *args: Any, **kwargs: Any) -> Any:
            # index_name is moto's 8th parameter, passed by position.
            index_name = kwargs.get("index_name", args[7] if len(args) > 7 else None)
            if not index_name:
                return original_query(self, *args, **kwargs)
            _UNSORTED.on = True
            try:
                return original_query(self, *args, **kwargs)
            finally:
                _UNSORTED.on = False

        query._skips_table_sort = True  # type: ignore[attr-defined]
        setattr(Table, "all_items", all_items)  # noqa: B010
        setattr(Table, "query", query)  # noqa: B010


_ATOMIC_UPDATES_INSTALLED = threading.Lock()


def atomic_updates() -> None:
    """Make moto's UpdateItem all or nothing, as DynamoDB's is.

    moto applies an update's SET actions one at a time, checking the item's size at each: an update
    it refuses part-way (an item grown past 400 KB) leaves the actions before it applied, a task
    FAIL without its finishedAt, say, which DynamoDB never does. The item's attributes are kept
    aside and put back when the update fails. Idempotent.
    """
    from moto.dynamodb import models  # noqa: PLC0415

    with _ATOMIC_UPDATES_INSTALLED:
        if getattr(models.DynamoDBBackend.update_item, "_atomic", False):
            return
        original = models.DynamoDBBackend.update_item

        def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            try:
                table = self.get_table(table_name)
                item = table.get_item(*self.get_keys_value(table, key))
            except Exception:  # the update itself reports what is wrong with its table or key
                item = None
            kept = copy.deepcopy(item.attrs) if item is not None else None
            try:
                return original(self, table_name, key, *args, **kwargs)
            except Exception:
                if item is not None:
                    item.attrs = kept
                raise

        update_item._atomic = True  # type: ignore[attr-defined]
        setattr(models.DynamoDBBackend, "update_item", update_item)  # noqa: B010


_ITEM_SIZE_INSTALLED = threading.Lock()
# moto's own limit, which it keeps (DynamoDB's documented 400 KB measures between 409 and 410 KB).
MOTO_ITEM_LIMIT_BYTES = 405_000


def item_size_after_update() -> None:
    """Judge an updated item's size as DynamoDB does: the item as it will be.

    moto checks each SET against the item's current size plus the new value, the value it replaces
    still counted: rewriting a task's 280 KiB blob progress counts it twice and is refused ("Item
    size to update has exceeded the maximum allowed size"), where DynamoDB stores the item. Every
    later write of that task is refused the same way, the deadline's FAIL too. Idempotent.
    """
    from moto.dynamodb.exceptions import ItemSizeTooLarge  # noqa: PLC0415
    from moto.dynamodb.models import dynamo_type  # noqa: PLC0415
    from moto.dynamodb.models.utilities import bytesize  # noqa: PLC0415

    with _ITEM_SIZE_INSTALLED:
        limited = dynamo_type.LimitedSizeDict
        if getattr(limited.__setitem__, "_after_update", False):
            return

        def size_of(value: Any) -> int:
            return int(value.size()) if type(value) is dynamo_type.DynamoType else bytesize(str(value))

        def __setitem__(self: Any, key: str, value: Any) -> None:
            others = sum(bytesize(name) + size_of(kept) for name, kept in self.items() if name != key)
            if others + bytesize(key) + size_of(value) > MOTO_ITEM_LIMIT_BYTES:
                raise ItemSizeTooLarge
            dict.__setitem__(self, key, value)

        __setitem__._after_update = True  # type: ignore[attr-defined]
        setattr(limited, "__setitem__", __setitem__)  # noqa: B010


def _threaded_server(host: str, port: int) -> Any:
    """moto's ThreadedMotoServer, its app behind :class:`_DynamoDBOneAtATime` (not started)."""
    # Imported here: moto loads every backend, which `python -m local.invoke` does not need.
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    class _Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _DynamoDBOneAtATime(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return _Server(ip_address=host, port=port, verbose=False)


class MotoServer:
    """moto in server mode on a background thread; ``port=0`` binds a free port (read it from ``url``).

    moto keeps its state per process, not per server, so ``start()`` empties it: every server starts
    blank, and two servers must not run at once in one process. ``stop()`` lets go of moto's models
    (it keeps every instance it ever made, table copies included).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server = _threaded_server(host, port)
        self._started = False

    def start(self) -> Self:
        if not self._started:
            if self._address[1]:
                # ThreadedMotoServer binds on its own thread and waits forever if that fails: find out here.
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(self._address)
            cheap_transaction_backups()
            cheap_index_queries()
            atomic_updates()
            item_size_after_update()
            self._server.start()
            self._started = True
            requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
            log.info("moto listening on %s", self.url)
        return self

    def go_down(self) -> None:
        """Stop answering, as an outage would: connections are refused, moto's state is kept."""
        self._server.stop()
        # ThreadedMotoServer.stop() leaves the socket listening: connections would hang, not fail.
        self._server._server.server_close()

    def come_back(self) -> None:
        """Answer again after :meth:`go_down`, on the same address, with the state moto kept (and
        DynamoDB's requests one at a time, as before: a plain ThreadedMotoServer would let them
        race inside moto and corrupt its tables)."""
        host, port = self._server.get_host_and_port()
        self._server = _threaded_server(host, port)
        self._server.start()

    def stop(self) -> None:
        if self._started:
            self._server.stop()
            self._started = False
            from moto.core.model_instances import reset_model_data  # noqa: PLC0415

            reset_model_data()

    @property
    def url(self) -> str:
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def client(service: str, endpoint_url: str) -> Any:
    """A boto3 client for the local endpoint that reads nothing from the environment or ~/.aws."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint_url,
        region_name=LOCAL_REGION,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        **LOCAL_CREDENTIALS,
    )


def physical_name(prefix: str, logical_id: str) -> str:
    return f"{prefix}-{logical_id}"


def _flag(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _queue_order(queues: Mapping[str, QueueSpec]) -> list[QueueSpec]:
    """Dead-letter targets before the queues that redrive to them (their ARN goes in the policy)."""
    ordered: list[QueueSpec] = []
    visiting: set[str] = set()

    def visit(queue: QueueSpec) -> None:
        if any(done.logical_id == queue.logical_id for done in ordered):
            return
        if queue.logical_id in visiting:
            raise TemplateError(f"redrive cycle through {queue.logical_id}")
        visiting.add(queue.logical_id)
        target = queue.dead_letter_queue
        if target is not None and target in queues:
            visit(queues[target])
        ordered.append(queue)

    for queue in queues.values():
        visit(queue)
    return ordered


def _create_table(dynamodb: Any, spec: TableSpec, name: str, props: Mapping[str, Any]) -> PhysicalResource:
    request: dict[str, Any] = {key: props[key] for key in _CREATE_TABLE_KEYS if key in props}
    sse = props.get("SSESpecification")
    if sse:
        request["SSESpecification"] = {_SSE_KEYS[k]: v for k, v in sse.items() if k in _SSE_KEYS}
    if props.get("Tags"):
        request["Tags"] = props["Tags"]
    try:
        dynamodb.create_table(TableName=name, **request)
    except dynamodb.exceptions.ResourceInUseException:
        raise RuntimeError(
            f"table {name} already exists in this moto: one moto per process holds one state, "
            "so give each local stack in a process its own name prefix"
        ) from None
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2})
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr and pitr.get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    log.info("created table %s for %s", name, spec.logical_id)
    return _table_resource(dynamodb, spec.logical_id, name)


def _table_resource(dynamodb: Any, logical_id: str, name: str) -> PhysicalResource:
    table = dynamodb.describe_table(TableName=name)["Table"]
    attributes = {"Arn": table["TableArn"]}
    if table.get("LatestStreamArn"):
        attributes["StreamArn"] = table["LatestStreamArn"]
    return PhysicalResource(logical_id, name, attributes)


def _queue_name(prefix: str, spec: QueueSpec, props: Mapping[str, Any]) -> str:
    name = physical_name(prefix, spec.logical_id)
    return name + ".fifo" if _flag(props.get("FifoQueue", False)) == "true" else name


def _queue_resource(sqs: Any, logical_id: str, name: str, url: str) -> PhysicalResource:
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return PhysicalResource(logical_id, url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


def _queue_attributes(props: Mapping[str, Any], visibility_timeout: int | None) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key, value in props.items():
        if key in _NOT_QUEUE_ATTRIBUTES:
            continue
        attributes[key] = json.dumps(value) if isinstance(value, dict) else _flag(value)
    if visibility_timeout is not None:
        attributes["VisibilityTimeout"] = str(visibility_timeout)
    return attributes


def _create_queue(
    sqs: Any, spec: QueueSpec, name: str, props: Mapping[str, Any], visibility_timeout: int | None
) -> PhysicalResource:
    tags = {tag["Key"]: tag["Value"] for tag in props.get("Tags") or ()}
    existing = sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    if any(url.rsplit("/", 1)[-1] == name for url in existing):
        raise RuntimeError(
            f"queue {name} already exists in this moto: one moto per process holds one state, "
            "so give each local stack in a process its own name prefix"
        )
    url = sqs.create_queue(
        QueueName=name, Attributes=_queue_attributes(props, visibility_timeout), tags=tags
    )["QueueUrl"]
    log.info("created queue %s for %s", name, spec.logical_id)
    return _queue_resource(sqs, spec.logical_id, name, url)


def provision(
    template: Template,
    endpoint_url: str,
    parameters: Mapping[str, str],
    *,
    name_prefix: str = DEFAULT_NAME_PREFIX,
    visibility_timeout: int | None = None,
) -> dict[str, PhysicalResource]:
    """Create every table and queue of ``template`` at ``endpoint_url``; logical id -> local resource.

    ``visibility_timeout`` replaces every queue's VisibilityTimeout (tests want redelivery in seconds,
    not the template's minutes); None keeps the template's values.
    """
    resources: dict[str, PhysicalResource] = {}
    # Property values may themselves reference parameters or resources created just before.
    resolver = Resolver(template, parameters, resources, LOCAL_REGION, LOCAL_ACCOUNT_ID, name_prefix)
    dynamodb = client("dynamodb", endpoint_url)
    for table in template.tables.values():
        props = resolver.resolve(dict(table.properties))
        resources[table.logical_id] = _create_table(
            dynamodb, table, physical_name(name_prefix, table.logical_id), props
        )
    sqs = client("sqs", endpoint_url)
    for spec in _queue_order(template.queues):
        props = resolver.resolve(dict(spec.properties))
        resources[spec.logical_id] = _create_queue(
            sqs, spec, _queue_name(name_prefix, spec, props), props, visibility_timeout
        )
    secretsmanager = client("secretsmanager", endpoint_url)
    for logical_id in _secret_ids(template):
        props = resolver.resolve(dict(template.resources[logical_id].get("Properties") or {}))
        resources[logical_id] = _create_secret(
            secretsmanager, logical_id, physical_name(name_prefix, logical_id), props
        )
    return resources


def _secret_ids(template: Template) -> list[str]:
    return [lid for lid in template.resources if template.resource_type(lid) == SECRET_TYPE]


def _create_secret(
    secretsmanager: Any, logical_id: str, name: str, props: Mapping[str, Any]
) -> PhysicalResource:
    if "SecretString" in props:
        value = str(props["SecretString"])
    else:
        # GenerateSecretString: a fresh random value, as CloudFormation would make one.
        length = int((props.get("GenerateSecretString") or {}).get("PasswordLength", 32))
        value = secrets.token_urlsafe(length)[:length]
    arn = secretsmanager.create_secret(Name=name, SecretString=value)["ARN"]
    log.info("created secret %s for %s", name, logical_id)
    return PhysicalResource(logical_id, arn, {"Id": arn})


def lookup(
    template: Template, endpoint_url: str, *, name_prefix: str = DEFAULT_NAME_PREFIX
) -> dict[str, PhysicalResource]:
    """The resources a running stack provisioned at ``endpoint_url`` (found by their deterministic names)."""
    resources: dict[str, PhysicalResource] = {}
    dynamodb = client("dynamodb", endpoint_url)
    for logical_id in template.tables:
        resources[logical_id] = _table_resource(dynamodb, logical_id, physical_name(name_prefix, logical_id))
    sqs = client("sqs", endpoint_url)
    for logical_id, spec in template.queues.items():
        # Unresolved properties: FifoQueue is a literal in any template that uses it.
        name = _queue_name(name_prefix, spec, spec.properties)
        resources[logical_id] = _queue_resource(
            sqs, logical_id, name, sqs.get_queue_url(QueueName=name)["QueueUrl"]
        )
    secretsmanager = client("secretsmanager", endpoint_url)
    for logical_id in _secret_ids(template):
        arn = secretsmanager.describe_secret(SecretId=physical_name(name_prefix, logical_id))["ARN"]
        resources[logical_id] = PhysicalResource(logical_id, arn, {"Id": arn})
    return resources
