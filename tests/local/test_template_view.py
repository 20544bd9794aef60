"""The template views, the resolution of every function variable, and the moto resources built from them."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local.aws import (
    LOCAL_ACCOUNT_ID,
    LOCAL_REGION,
    MotoServer,
    _DynamoDBOneAtATime,
    client,
    lookup,
    provision,
)
from local.lambda_runtime import (
    EnvConflictError,
    LambdaRuntime,
    function_environment,
    template_variable_names,
    union_environment,
)
from local.template import ApiEvent, Fn, GetAtt, Ref, Resolver, SqsEvent, Template, TemplateError, load_yaml
from tests.local.support import FIXTURE_TEMPLATE, PROJECT_TEMPLATE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.load(PROJECT_TEMPLATE)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def test_short_and_long_intrinsics_load_as_the_same_objects(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Version: 2010-09-09\n"
        "A: !Ref X\n"
        "B: !GetAtt Q.Arn\n"
        "C: !GetAtt [Q, QueueName]\n"
        "D: {Ref: X}\n"
        'E: {"Fn::GetAtt": [Q, Arn]}\n'
        "F: !Sub '${X}-${Q.Arn}'\n"
        "G: !If [Cond, !Ref X, b]\n"
        "H: !Join ['-', [a, !Ref X]]\n",
        encoding="utf-8",
    )
    doc = load_yaml(path)
    assert doc["Version"] == "2010-09-09"  # no date: CloudFormation reads scalars as strings
    assert doc["A"] == doc["D"] == Ref("X")
    assert doc["B"] == doc["E"] == GetAtt("Q", "Arn")
    assert doc["C"] == GetAtt("Q", "QueueName")
    assert doc["F"] == Fn("Fn::Sub", "${X}-${Q.Arn}")
    assert doc["G"] == Fn("Fn::If", ["Cond", Ref("X"), "b"])
    assert doc["H"] == Fn("Fn::Join", ["-", ["a", Ref("X")]])


def test_project_template_functions_merge_globals_and_read_their_events(template: Template) -> None:
    declared = {
        logical_id
        for logical_id, resource in template.raw["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert set(template.functions) == declared
    assert {"CheckFunction", "PreheatFunction", "StatusFunction", "WorkerFunction"} <= declared
    worker = template.functions["WorkerFunction"]
    assert worker.code_uri == PROJECT_TEMPLATE.parent / "functions" / "worker"
    assert worker.handler_file == PROJECT_TEMPLATE.parent / "functions" / "worker" / "app.py"
    assert worker.handler_name == "lambda_handler"
    raw_worker = template.raw["Resources"]["WorkerFunction"]["Properties"]
    assert (worker.timeout, worker.memory_size) == (raw_worker["Timeout"], raw_worker["MemorySize"])
    assert worker.environment["PREHEAT_TABLE_NAME"] == Ref("TasksTable")  # from Globals
    assert worker.environment["PREHEAT_QUEUE_URL"] == Ref("PreheatQueue")  # its own
    batch_size = raw_worker["Events"]["Steps"]["Properties"]["BatchSize"]
    assert worker.events == (SqsEvent("Steps", "PreheatQueue", batch_size, ("ReportBatchItemFailures",)),)
    assert worker.sqs_events[0].report_batch_item_failures
    assert template.functions["CheckFunction"].timeout == 10
    assert template.functions["StatusFunction"].timeout == 30  # Globals
    assert template.functions["StatusFunction"].events == (
        ApiEvent("Status", "/api/preheat/{taskId}", "GET", "PreheatApi"),
        ApiEvent("List", "/api/preheat", "GET", "PreheatApi"),
    )
    # The worker adds the gRPC layer to the Globals' shared one, as SAM appends a function's Layers.
    layers = PROJECT_TEMPLATE.parent / "layers"
    assert template.layer_dirs(worker) == (layers / "shared", layers / "grpc")


def test_project_template_resources_and_parameters(template: Template) -> None:
    assert set(template.tables) == {"TasksTable"}
    assert set(template.queues) == {"PreheatQueue", "PreheatDeadLetterQueue", "ScheduledPreheatFailuresQueue"}
    assert template.queues["PreheatQueue"].dead_letter_queue == "PreheatDeadLetterQueue"
    assert template.queues["PreheatQueue"].max_receive_count == 50
    assert template.queues["PreheatDeadLetterQueue"].dead_letter_queue is None
    assert template.parameters["TaskTimeoutSeconds"].default == "1800"
    assert template.parameters["Supernodes"].default is None
    values = template.parameter_values({"Supernodes": "http://127.0.0.1:8002"})
    assert values["LogLevel"] == "INFO"
    assert "Supernodes" in values


@pytest.mark.parametrize(
    ("name", "value"),
    [("Supernodes", "ftp://x"), ("LogLevel", "LOUD"), ("TaskTimeoutSeconds", "5"), ("Nope", "1")],
)
def test_parameter_values_are_refused_like_a_deploy_would(template: Template, name: str, value: str) -> None:
    with pytest.raises(TemplateError):
        template.parameter_values({name: value})


def _project_resolver(template: Template, moto: MotoServer, prefix: str) -> Resolver:
    parameters = template.parameter_values(
        {"Supernodes": "http://127.0.0.1:8002", "InsecureRegistries": "localhost,127.0.0.1"}
    )
    resources = provision(template, moto.url, parameters, name_prefix=prefix)
    resources.update(LambdaRuntime(template, name_prefix=prefix).function_resources())
    return Resolver(template, parameters, resources, LOCAL_REGION, LOCAL_ACCOUNT_ID)


def test_every_variable_of_every_function_gets_a_local_value(template: Template, moto: MotoServer) -> None:
    resolver = _project_resolver(template, moto, "view-env")
    for spec in template.functions.values():
        env = function_environment(spec, resolver)
        assert set(env) == set(spec.environment), spec.logical_id
        # Only variables fed by a parameter whose default is empty may be empty.
        optional = {
            name
            for name, value in spec.environment.items()
            if isinstance(value, Ref)
            and template.parameters.get(value.name) is not None
            and template.parameters[value.name].default == ""
        }
        assert all(value for name, value in env.items() if name not in optional), (spec.logical_id, env)
    union = union_environment(template, resolver)
    assert set(union) == template_variable_names(template)
    assert union["PREHEAT_TABLE_NAME"] == "view-env-TasksTable"
    assert union["PREHEAT_QUEUE_URL"] == resolver.resources["PreheatQueue"].ref
    assert union["PREHEAT_QUEUE_URL"].startswith(moto.url)
    assert union["PREHEAT_SUPERNODES"] == "http://127.0.0.1:8002"
    assert union["PREHEAT_TASK_TIMEOUT"] == "1800"
    assert union["POWERTOOLS_LOG_LEVEL"] == "INFO"
    # An override replaces a variable without resolving the template's expression for it.
    assert (
        union_environment(template, resolver, {"PREHEAT_TASK_TIMEOUT": "60"})["PREHEAT_TASK_TIMEOUT"] == "60"
    )


def test_tables_are_created_with_the_template_properties(template: Template, moto: MotoServer) -> None:
    resolver = _project_resolver(template, moto, "view-table")
    dynamodb = client("dynamodb", moto.url)
    name = resolver.resources["TasksTable"].ref
    table = dynamodb.describe_table(TableName=name)["Table"]
    props = template.tables["TasksTable"].properties
    assert table["KeySchema"] == props["KeySchema"]
    assert table["AttributeDefinitions"] == props["AttributeDefinitions"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSEDescription"]["Status"] == "ENABLED"
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}
    backups = dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_queues_are_created_with_the_template_properties(template: Template, moto: MotoServer) -> None:
    resolver = _project_resolver(template, moto, "view-queue")
    sqs = client("sqs", moto.url)
    queue = resolver.resources["PreheatQueue"]
    dlq = resolver.resources["PreheatDeadLetterQueue"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue.ref, AttributeNames=["All"])["Attributes"]
    raw_queue = template.raw["Resources"]["PreheatQueue"]["Properties"]
    assert attributes["VisibilityTimeout"] == str(raw_queue["VisibilityTimeout"])
    assert attributes["MessageRetentionPeriod"] == "345600"
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq.attributes["Arn"],
        "maxReceiveCount": raw_queue["RedrivePolicy"]["maxReceiveCount"],
    }
    dlq_attributes = sqs.get_queue_attributes(QueueUrl=dlq.ref, AttributeNames=["All"])["Attributes"]
    assert dlq_attributes["MessageRetentionPeriod"] == "1209600"
    assert dlq.attributes["QueueName"] == "view-queue-PreheatDeadLetterQueue"
    # A running stack's resources are found again by their names (what `local.invoke` relies on).
    found = lookup(template, moto.url, name_prefix="view-queue")
    assert found["PreheatQueue"] == queue
    assert found["TasksTable"] == resolver.resources["TasksTable"]


def test_visibility_timeout_override_applies_to_every_queue(template: Template, moto: MotoServer) -> None:
    parameters = template.parameter_values({"Supernodes": "http://127.0.0.1:8002"})
    resources = provision(template, moto.url, parameters, name_prefix="view-vis", visibility_timeout=2)
    sqs = client("sqs", moto.url)
    for logical_id in template.queues:
        attributes = sqs.get_queue_attributes(
            QueueUrl=resources[logical_id].ref, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        assert attributes["VisibilityTimeout"] == "2", logical_id


def test_fixture_template_resolves_sub_if_and_getatt(moto: MotoServer) -> None:
    template = Template.load(FIXTURE_TEMPLATE)
    parameters = template.parameter_values()
    resources = provision(template, moto.url, parameters, name_prefix="view-fixture")
    resolver = Resolver(template, parameters, resources, LOCAL_REGION, LOCAL_ACCOUNT_ID)
    env = function_environment(template.functions["EchoFunction"], resolver)
    assert env["GREETING"] == "hello"
    assert env["STAGE_KIND"] == "testing"
    assert env["TABLE_LABEL"] == "view-fixture-ItemsTable@us-east-1"
    assert env["QUEUE_ARN"] == "arn:aws:sqs:us-east-1:123456789012:view-fixture-WorkQueue"
    redrive = json.loads(
        client("sqs", moto.url).get_queue_attributes(
            QueueUrl=resources["WorkQueue"].ref, AttributeNames=["RedrivePolicy"]
        )["Attributes"]["RedrivePolicy"]
    )
    assert redrive["maxReceiveCount"] == 2  # !Ref MaxReceives, resolved before creating the queue


def test_conflicting_variables_fail_loudly(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(
        """
Globals:
  Function:
    Environment:
      Variables:
        SHARED: same
Resources:
  One:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: one/, Handler: app.handler, Environment: {Variables: {MODE: fast}}}
  Two:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: two/, Handler: app.handler, Environment: {Variables: {MODE: slow}}}
""",
        encoding="utf-8",
    )
    template = Template.load(path)
    resolver = Resolver(template, {}, {}, LOCAL_REGION, LOCAL_ACCOUNT_ID)
    with pytest.raises(EnvConflictError, match="MODE is 'fast' for One but 'slow' for Two"):
        union_environment(template, resolver)
    # An override gives both the same value, so they can share the process.
    assert union_environment(template, resolver, {"MODE": "x"}) == {"SHARED": "same", "MODE": "x"}


def test_a_reference_without_a_local_value_names_what_is_missing(template: Template) -> None:
    resolver = Resolver(template, template.parameter_values(), {}, LOCAL_REGION, LOCAL_ACCOUNT_ID)
    with pytest.raises(TemplateError, match="CheckFunction: PREHEAT_TABLE_NAME: !Ref TasksTable"):
        function_environment(template.functions["CheckFunction"], resolver)
    with pytest.raises(TemplateError, match="parameter Supernodes has no default"):
        resolver.resolve(Ref("Supernodes"))


def test_moto_comes_back_after_an_outage_with_its_state_and_dynamodb_one_at_a_time(moto: MotoServer) -> None:
    dynamodb = client("dynamodb", moto.url)
    table = f"outage-{secrets.token_hex(4)}"  # moto's state is one per process: a table of its own
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "kept"}})
    url = moto.url

    moto.go_down()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/moto-api/", timeout=2)
    moto.come_back()

    assert moto.url == url
    assert dynamodb.get_item(TableName=table, Key={"pk": {"S": "kept"}})["Item"] == {"pk": {"S": "kept"}}
    # The server that came back serializes DynamoDB's requests as the first one did: without it,
    # concurrent writes race inside moto's tables (the fault suite's corrupted tasks).
    assert isinstance(moto._server._server.app, _DynamoDBOneAtATime)


def test_moto_judges_an_updated_items_size_as_it_will_be(moto: MotoServer) -> None:
    # moto counted the value an update replaces as well as its new one: rewriting a task's large
    # blob progress was refused ("Item size to update has exceeded the maximum allowed size"), and
    # every later write of that task with it, the deadline's FAIL too; DynamoDB stores the item.
    dynamodb = client("dynamodb", moto.url)
    table = f"sizes-{secrets.token_hex(4)}"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    key = {"pk": {"S": "task"}}
    dynamodb.put_item(TableName=table, Item={**key, "blobs": {"B": b"a" * 250_000}})

    dynamodb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="SET blobs = :blobs, msg = :msg",
        ExpressionAttributeValues={":blobs": {"B": b"b" * 250_000}, ":msg": {"S": "m" * 8000}},
    )
    item = dynamodb.get_item(TableName=table, Key=key)["Item"]
    assert item["blobs"]["B"] == b"b" * 250_000
    # An item really over the limit is still refused, and left as it was.
    with pytest.raises(dynamodb.exceptions.ClientError, match="exceeded the maximum allowed size"):
        dynamodb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET msg = :msg, more = :more",
            ExpressionAttributeValues={":msg": {"S": "n"}, ":more": {"B": b"c" * 200_000}},
        )
    assert dynamodb.get_item(TableName=table, Key=key)["Item"]["msg"] == {"S": "m" * 8000}
