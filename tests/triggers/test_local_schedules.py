"""The local EventBridge Scheduler: expressions, the template's schedules, and firing them."""

from __future__ import annotations

import json
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.schedules import (
    CronExpression,
    LocalSchedule,
    LocalScheduler,
    RateExpression,
    ScheduleExpressionError,
    parse_expression,
    schedules_from_template,
)
from local.stack import stack_from_environ
from local.template import PhysicalResource, Resolver, Template, TemplateError

ROOT = Path(__file__).resolve().parents[2]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def nexts(expression: str, start: datetime, count: int = 3, timezone: str = "UTC") -> list[datetime]:
    cron = parse_expression(expression, timezone)
    assert isinstance(cron, CronExpression)
    found, moment = [], start
    for _ in range(count):
        following = cron.next_after(moment)
        assert following is not None
        found.append(following)
        moment = following
    return found


# --- expressions ---------------------------------------------------------------------------------


def test_the_default_schedule_runs_every_day_at_five_utc():
    assert nexts("cron(0 5 * * ? *)", utc(2026, 3, 2, 5, 0)) == [
        utc(2026, 3, 3, 5, 0),
        utc(2026, 3, 4, 5, 0),
        utc(2026, 3, 5, 5, 0),
    ]


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # Steps, from * and from a start value.
        ("cron(*/15 * * * ? *)", utc(2026, 1, 1, 10, 7), [utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 30)]),
        ("cron(5/20 * * * ? *)", utc(2026, 1, 1, 10, 46), [utc(2026, 1, 1, 11, 5), utc(2026, 1, 1, 11, 25)]),
        # Weekdays by name (1 is Sunday): Friday 2026-01-02, then Monday.
        ("cron(30 6 ? * MON-FRI *)", utc(2026, 1, 2, 7, 0), [utc(2026, 1, 5, 6, 30), utc(2026, 1, 6, 6, 30)]),
        ("cron(0 0 ? * 1 *)", utc(2026, 1, 1), [utc(2026, 1, 4), utc(2026, 1, 11)]),
        # Lists, months by name, and a day that not every month has.
        ("cron(0 12 31 JAN,MAR ? *)", utc(2026, 1, 31, 12, 0), [utc(2026, 3, 31, 12), utc(2027, 1, 31, 12)]),
        ("cron(0 9,17 1 * ? *)", utc(2026, 2, 1, 10), [utc(2026, 2, 1, 17), utc(2026, 3, 1, 9)]),
        # A range of years that ends.
        ("cron(0 0 1 1 ? 2027-2028)", utc(2026, 6, 1), [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("cron(0 0 29 2 ? *)", utc(2026, 1, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
    ],
)
def test_cron_expressions_fire_when_aws_would(expression: str, start: datetime, expected: list[datetime]):
    assert nexts(expression, start, len(expected)) == expected


def test_a_cron_with_no_time_left_never_fires_again():
    cron = parse_expression("cron(0 0 1 1 ? 2027)")
    assert isinstance(cron, CronExpression)
    assert cron.next_after(utc(2027, 1, 1, 0, 0)) is None


def test_cron_is_read_in_the_schedule_time_zone():
    # 05:00 in Berlin is 04:00 UTC in winter and 03:00 UTC in summer.
    assert nexts("cron(0 5 * * ? *)", utc(2026, 3, 27, 12), 3, "Europe/Berlin") == [
        utc(2026, 3, 28, 4),
        utc(2026, 3, 29, 3),
        utc(2026, 3, 30, 3),
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 5 * * *)", "six fields"),
        ("cron(0 5 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
        ("cron(0 5 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
        ("cron(0 5 L * ? *)", "uses L, W or #"),
        ("cron(0 5 15W * ? *)", "uses L, W or #"),
        ("cron(0 5 ? * MON#2 *)", "uses L, W or #"),
        ("cron(0 5 ? * 6L *)", "uses L, W or #"),
        ("cron(60 5 * * ? *)", "minutes 60 is outside 0-59"),
        ("cron(0 5 * 13 ? *)", "month 13 is outside 1-12"),
        ("cron(0 5 * FOO ? *)", "not a number or name"),
        ("cron(0 20-5 * * ? *)", "runs backwards"),
        ("cron(*/0 5 * * ? *)", "step '0' is not >= 1"),
        ("cron(? 5 * * ? *)", "'?' is only for day-of-month or day-of-week"),
        ("rate(1 minutes)", "singular unit for 1"),
        ("rate(5 minute)", "singular unit for 1"),
        ("rate(0 minutes)", "positive"),
        ("rate(5 weeks)", "not a rate expression"),
        ("at(2026-13-01T00:00:00)", "month must be in 1..12"),
        ("every day", "not a schedule expression"),
    ],
)
def test_expressions_aws_or_the_local_scheduler_refuse_say_why(expression: str, message: str):
    with pytest.raises(ScheduleExpressionError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_expression(expression)


def test_an_unknown_time_zone_is_refused():
    with pytest.raises(ScheduleExpressionError, match="IANA time zone"):
        parse_expression("rate(1 hour)", "Mars/Olympus_Mons")


def test_rates_count_from_the_start_and_catch_up_once():
    rate = parse_expression("rate(5 minutes)")
    assert isinstance(rate, RateExpression)
    start = utc(2026, 1, 1, 12, 0, 30)
    first = rate.first(start)
    assert first == utc(2026, 1, 1, 12, 5, 30)
    # Woken 12 minutes late: the next time is the next on the original grid, not 12 late ones.
    assert rate.following(first, first + timedelta(minutes=12)) == utc(2026, 1, 1, 12, 20, 30)


def test_at_fires_once_and_only_in_the_future():
    once = parse_expression("at(2026-06-01T08:00:00)", "Europe/Berlin")
    assert once.first(utc(2026, 1, 1)) == utc(2026, 6, 1, 6, 0)
    assert once.first(utc(2026, 7, 1)) is None
    assert once.following(utc(2026, 6, 1, 6), utc(2026, 6, 1, 6)) is None


# --- the template's schedules ------------------------------------------------------------------------

SCHEDULES_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Items:
    Type: String
    Default: ""
  Every:
    Type: String
    Default: rate(1 hour)
Conditions:
  HasItems: !Not [!Equals [!Ref Items, ""]]
Resources:
  Target:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/target/
      Handler: app.handler
      Runtime: python3.13
      Events:
        Nightly:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(0 5 * * ? *)
            ScheduleExpressionTimezone: Europe/Berlin
            Input: '{"from": "event"}'
        Paused:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: rate(1 minute)
            State: DISABLED
  Conditional:
    Type: AWS::Scheduler::Schedule
    Condition: HasItems
    Properties:
      ScheduleExpression: !Ref Every
      FlexibleTimeWindow: {Mode: "OFF"}
      Target:
        Arn: !GetAtt Target.Arn
        RoleArn: !GetAtt Role.Arn
        Input: !Sub '{"items": ${Items}}'
  Elsewhere:
    Type: AWS::Scheduler::Schedule
    Properties:
      ScheduleExpression: rate(1 day)
      FlexibleTimeWindow: {Mode: "OFF"}
      Target:
        Arn: arn:aws:sqs:us-east-1:123456789012:some-queue
        RoleArn: arn:aws:iam::123456789012:role/r
"""

ARN = "arn:aws:lambda:us-east-1:123456789012:function:local-Target"


def load(tmp_path: Path, text: str = SCHEDULES_TEMPLATE) -> Template:
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(text))
    return Template.load(path)


def resolver(template: Template, **parameters: str) -> Resolver:
    resources = {"Target": PhysicalResource("Target", "local-Target", {"Arn": ARN})}
    values = template.parameter_values(parameters)
    return Resolver(template, values, resources, "us-east-1", "123456789012")


def test_the_template_schedules_that_exist_with_the_parameters_are_found(tmp_path: Path):
    template = load(tmp_path)
    found = {s.name: s for s in schedules_from_template(template, resolver(template))}
    # Paused is DISABLED, Conditional's condition is false, Elsewhere targets no function.
    assert set(found) == {"TargetNightly"}
    assert found["TargetNightly"].function == "Target"
    assert found["TargetNightly"].event == {"from": "event"}
    assert found["TargetNightly"].expression.text == "cron(0 5 * * ? *)"
    assert found["TargetNightly"].expression.first(utc(2026, 1, 1, 12)) == utc(2026, 1, 2, 4)

    found = {
        s.name: s
        for s in schedules_from_template(template, resolver(template, Items="[1, 2]", Every="rate(2 hours)"))
    }
    assert set(found) == {"TargetNightly", "Conditional"}
    assert found["Conditional"].event == {"items": [1, 2]}
    assert found["Conditional"].function == "Target"
    assert found["Conditional"].expression.text == "rate(2 hours)"


def test_a_bad_expression_or_input_in_the_template_names_the_schedule(tmp_path: Path):
    template = load(tmp_path)
    with pytest.raises(ScheduleExpressionError, match=r"schedule Conditional: 'rate\(1 hours\)'"):
        schedules_from_template(template, resolver(template, Items="[1]", Every="rate(1 hours)"))
    with pytest.raises(TemplateError, match="schedule Conditional: Input is not JSON"):
        schedules_from_template(template, resolver(template, Items="[1,"))


def test_the_project_template_has_the_sweeper_schedule_and_one_more_with_scheduled_preheats():
    template = Template.load(ROOT / "template.yaml")
    arn = "arn:aws:lambda:us-east-1:123456789012:function:preheat-local-ScheduledPreheatFunction"
    resources = {
        logical_id: PhysicalResource(
            logical_id, logical_id, {"Arn": arn.replace("ScheduledPreheatFunction", logical_id)}
        )
        for logical_id in template.functions
    }

    def found(**parameters: str) -> list[LocalSchedule]:
        values = template.parameter_values({"Supernodes": "http://supernode:8002", **parameters})
        return schedules_from_template(template, Resolver(template, values, resources, "us-east-1", "1"))

    # The sweeper's schedule always exists: every 5 minutes, locally as deployed.
    (sweeper,) = found()
    assert (sweeper.name, sweeper.function) == ("SweeperFunctionSweep", "SweeperFunction")
    assert sweeper.expression.text == "rate(5 minutes)"
    assert set(sweeper.event) == {"id", "time"}
    assert found(ScheduledPreheats="[]") == [sweeper]
    preheats = [{"type": "image", "url": "registry.example.com/team/app:latest"}]
    (schedule,) = [s for s in found(ScheduledPreheats=json.dumps(preheats)) if s != sweeper]
    assert schedule.function == "ScheduledPreheatFunction"
    assert schedule.event == {"preheats": preheats}
    assert schedule.expression.text == "cron(0 5 * * ? *)"


# --- firing ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def scheduler(clock: Clock, calls: list[tuple[str, Any]], fail: bool = False) -> LocalScheduler:
    def invoke(function: str, event: Any) -> Any:
        calls.append((function, event))
        if fail:
            raise RuntimeError("handler failed")
        return {"ok": len(calls)}

    schedules = [
        LocalSchedule("Every5", "Fn", parse_expression("rate(5 minutes)"), {"n": 5}),
        LocalSchedule("Hourly", "Fn", parse_expression("cron(0 * * * ? *)"), {"n": 60}),
    ]
    return LocalScheduler(schedules, invoke, clock=clock, poll_interval=3600)


def test_run_due_fires_what_is_due_and_schedules_the_next_time():
    clock, calls = Clock(utc(2026, 1, 1, 11, 58)), []
    with scheduler(clock, calls) as local:
        assert local.run_due() == []
        assert local.next_due("Every5") == utc(2026, 1, 1, 12, 3)
        assert local.next_due("Hourly") == utc(2026, 1, 1, 12, 0)

        clock.now = utc(2026, 1, 1, 12, 0)
        (firing,) = local.run_due()
        assert (firing.schedule, firing.due, firing.result) == ("Hourly", utc(2026, 1, 1, 12), {"ok": 1})
        assert calls == [("Fn", {"n": 60})]
        assert local.next_due("Hourly") == utc(2026, 1, 1, 13, 0)

        # Half an hour passes unseen: Every5 fires once, not six times, and carries on from now.
        clock.now = utc(2026, 1, 1, 12, 31)
        assert [f.schedule for f in local.run_due()] == ["Every5"]
        assert local.next_due("Every5") == utc(2026, 1, 1, 12, 33)
        clock.now = utc(2026, 1, 1, 14, 30)
        assert sorted(f.schedule for f in local.run_due()) == ["Every5", "Hourly"]
        assert local.next_due("Hourly") == utc(2026, 1, 1, 15, 0)
        assert len(local.history) == 4


def test_fire_invokes_one_schedule_now_and_a_failing_handler_is_recorded_not_raised():
    clock, calls = Clock(utc(2026, 1, 1)), []
    with scheduler(clock, calls, fail=True) as local:
        firing = local.fire("Every5")
        assert firing.due is None
        assert firing.error == "RuntimeError: handler failed"
        assert calls == [("Fn", {"n": 5})]
        assert local.next_due("Every5") == utc(2026, 1, 1, 0, 5)  # fire() leaves the schedule alone
        with pytest.raises(KeyError, match="there are: Every5, Hourly"):
            local.fire("Nope")


def test_the_background_thread_follows_the_clock():
    clock, calls = Clock(utc(2026, 1, 1, 0, 0)), []
    local = LocalScheduler(
        [LocalSchedule("Every5", "Fn", parse_expression("rate(5 minutes)"), {})],
        lambda function, event: calls.append(function),
        clock=clock,
        poll_interval=0.01,
    )
    with local:
        clock.now += timedelta(minutes=5)
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while not calls and datetime.now(UTC) < deadline:
            time.sleep(0.01)
    assert calls == ["Fn"]


# --- the stack's switches ----------------------------------------------------------------------------


def test_the_stack_reads_local_schedules_and_parameters_from_the_environment(tmp_path: Path):
    environ = {
        "PREHEAT_LOCAL_DIR": str(tmp_path),
        "PREHEAT_LOCAL_SCHEDULES": "1",
        "PREHEAT_LOCAL_PARAMETERS": json.dumps(
            {"PreheatSchedule": "rate(1 minute)", "ScheduledPreheats": [{"type": "image", "url": "a.io/b"}]}
        ),
    }
    stack = stack_from_environ(environ)
    assert stack._schedules is True
    assert stack._parameter_overrides == {
        "PreheatSchedule": "rate(1 minute)",
        "ScheduledPreheats": '[{"type": "image", "url": "a.io/b"}]',
    }
    assert stack_from_environ({"PREHEAT_LOCAL_DIR": str(tmp_path)})._schedules is False
    with pytest.raises(SystemExit, match="must be a JSON object"):
        stack_from_environ({"PREHEAT_LOCAL_DIR": str(tmp_path), "PREHEAT_LOCAL_PARAMETERS": "[1]"})
