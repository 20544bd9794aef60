"""The template's triggers: the conditional schedule and its input, the ECR push rule and its filter,
who may invoke the function, and the worker's credentials settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local.lambda_runtime import function_environment
from local.template import Fn, GetAtt, PhysicalResource, Ref, Resolver, Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template.load(ROOT / "template.yaml")
RESOURCES = TEMPLATE.resources
FUNCTION = "ScheduledPreheatFunction"


def resolver(**parameters: str) -> Resolver:
    values = TEMPLATE.parameter_values({"Supernodes": "http://supernode:8002", **parameters})
    physical = {
        "PreheatQueue": PhysicalResource("PreheatQueue", "http://sqs/queue", {"QueueName": "queue"}),
        "TasksTable": PhysicalResource("TasksTable", "tasks", {"Arn": "arn:table"}),
        FUNCTION: PhysicalResource(FUNCTION, "fn", {"Arn": "arn:aws:lambda:us-east-1:1:function:fn"}),
        "DedupKeySecret": PhysicalResource("DedupKeySecret", "arn:secret:dedup", {"Id": "arn:secret:dedup"}),
    }
    return Resolver(TEMPLATE, values, physical, "us-east-1", "123456789012")


def props(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = RESOURCES[logical_id]["Properties"]
    return properties


@pytest.mark.parametrize(
    ("preheats", "exists"),
    [("", False), ("[]", False), ('[{"type":"image","url":"a.io/b:c"}]', True)],
)
def test_the_schedule_exists_only_when_there_is_something_to_preheat(preheats: str, exists: bool):
    assert RESOURCES["ScheduledPreheatsSchedule"]["Condition"] == "HasScheduledPreheats"
    assert resolver(ScheduledPreheats=preheats).condition("HasScheduledPreheats") is exists


def test_the_schedule_runs_the_parameters_preheats_on_the_parameters_expression():
    schedule = props("ScheduledPreheatsSchedule")
    parameters = TEMPLATE.raw["Parameters"]
    assert schedule["ScheduleExpression"] == Ref("PreheatSchedule")
    assert parameters["PreheatSchedule"]["Default"] == "cron(0 5 * * ? *)"
    assert parameters["ScheduledPreheats"]["Default"] == ""
    assert schedule["ScheduleExpressionTimezone"] == Ref("PreheatScheduleTimezone")
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == GetAtt(FUNCTION, "Arn")
    assert target["RoleArn"] == GetAtt("SchedulerInvokeRole", "Arn")
    preheats = [{"type": "image", "url": "registry.example.com/team/app:latest", "platform": "linux/amd64"}]
    rendered = resolver(ScheduledPreheats=json.dumps(preheats)).resolve(target["Input"])
    assert json.loads(rendered) == {"preheats": preheats}


@pytest.mark.parametrize("value", ["{}", " ", '{"type":"image"}'])
def test_scheduled_preheats_must_be_a_json_array(value: str):
    with pytest.raises(ValueError, match="does not match"):
        TEMPLATE.parameter_values({"ScheduledPreheats": value})


def test_the_scheduler_role_may_only_invoke_the_function():
    role = props("SchedulerInvokeRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": Ref("AWS::AccountId")}}
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["lambda:InvokeFunction"]
    assert statement["Resource"][0] == GetAtt(FUNCTION, "Arn")
    assert statement["Resource"][1] == Fn("Fn::Sub", f"${{{FUNCTION}.Arn}}:*")
    # Not conditional: users' own schedules use it too (it is an output).
    assert "Condition" not in RESOURCES["SchedulerInvokeRole"]
    assert TEMPLATE.raw["Outputs"]["SchedulerInvokeRoleArn"]["Value"] == GetAtt("SchedulerInvokeRole", "Arn")
    assert TEMPLATE.raw["Outputs"]["ScheduledPreheatFunctionArn"]["Value"] == GetAtt(FUNCTION, "Arn")


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("true", True)])
def test_preheat_on_ecr_push_is_off_unless_asked_for(value: str, enabled: bool):
    assert TEMPLATE.raw["Parameters"]["PreheatOnEcrPush"]["Default"] == "false"
    for logical_id in ("EcrPushRule", "EcrPushInvokePermission"):
        assert RESOURCES[logical_id]["Condition"] == "PreheatOnEcrPushEnabled"
    assert resolver(PreheatOnEcrPush=value).condition("PreheatOnEcrPushEnabled") is enabled


@pytest.mark.parametrize(
    ("repository_filter", "repositories"),
    [("", None), ("team/", [{"prefix": "team/"}])],
)
def test_the_rule_takes_successful_pushes_of_the_filtered_repositories(
    repository_filter: str, repositories: Any
):
    rule = props("EcrPushRule")
    pattern = resolver(EcrRepositoryFilter=repository_filter).resolve(rule["EventPattern"])
    detail = {"action-type": ["PUSH"], "result": ["SUCCESS"]}
    if repositories is not None:
        detail["repository-name"] = repositories
    assert pattern == {"source": ["aws.ecr"], "detail-type": ["ECR Image Action"], "detail": detail}
    (target,) = rule["Targets"]
    assert target["Arn"] == GetAtt(FUNCTION, "Arn")
    permission = props("EcrPushInvokePermission")
    assert permission["FunctionName"] == Ref(FUNCTION)
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == GetAtt("EcrPushRule", "Arn")


def test_the_worker_is_told_which_secret_holds_registry_credentials():
    worker = TEMPLATE.functions["WorkerFunction"]
    assert function_environment(worker, resolver())["PREHEAT_REGISTRY_CREDENTIALS_SECRET"] == ""
    named = resolver(RegistryCredentialsSecretName="preheat/registries")
    assert function_environment(worker, named)["PREHEAT_REGISTRY_CREDENTIALS_SECRET"] == "preheat/registries"
    assert named.condition("HasRegistryCredentialsSecret") is True


def test_the_function_submits_to_the_same_queue_and_table_as_the_api():
    environment = function_environment(TEMPLATE.functions[FUNCTION], resolver())
    api = function_environment(TEMPLATE.functions["PreheatFunction"], resolver())
    assert environment == api
    assert environment["PREHEAT_QUEUE_URL"] == "http://sqs/queue"


def test_an_invocation_that_fails_every_retry_lands_in_an_alarmed_queue():
    """Scheduler and EventBridge invoke asynchronously: after its retries, the event goes to an
    OnFailure destination with its error, instead of being dropped."""
    config = props(FUNCTION)["EventInvokeConfig"]
    assert config["MaximumRetryAttempts"] == 2
    destination = config["DestinationConfig"]["OnFailure"]
    assert destination["Type"] == "SQS"
    assert destination["Destination"] == GetAtt("ScheduledPreheatFailuresQueue", "Arn")
    queue = props("ScheduledPreheatFailuresQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    alarm = props("ScheduledPreheatFailuresAlarm")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": GetAtt("ScheduledPreheatFailuresQueue", "QueueName")}
    ]
    assert (alarm["MetricName"], alarm["Threshold"]) == ("ApproximateNumberOfMessagesVisible", 0)


def test_every_function_has_a_log_group_with_retention():
    groups = {
        resource["Properties"]["LogGroupName"].args: resource["Properties"]["RetentionInDays"]
        for resource in RESOURCES.values()
        if resource["Type"] == "AWS::Logs::LogGroup" and "LogGroupName" in resource["Properties"]
    }
    for function in TEMPLATE.functions:
        assert groups.get(f"/aws/lambda/${{{function}}}") == Ref("LogRetentionDays"), function
