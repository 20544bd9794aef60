"""EventBridge Scheduler, locally: fires the template's schedules at the functions they target.

The schedules are the template's own (``ScheduleV2`` events of functions, and
``AWS::Scheduler::Schedule`` resources whose ``Target.Arn`` is a function of the template), with
intrinsics resolved against the local stack's parameter values, and ``Condition``, ``State`` and
``ScheduleExpressionTimezone`` honoured: a schedule the deployed stack would not have does not fire.

Expressions are EventBridge Scheduler's:

* ``rate(N minute|minutes|hour|hours|day|days)``: every N units from the moment the scheduler starts.
* ``cron(minutes hours day-of-month month day-of-week year)``: six fields with ``*``, ``?``, ranges
  (``1-5``), lists (``1,15``), steps (``*/5``, ``0/15``, ``10-50/10``) and names (``JAN``, ``MON-FRI``,
  1 = Sunday); one of day-of-month and day-of-week must be ``?``. ``L``, ``W`` and ``#`` are refused.
* ``at(yyyy-mm-ddThh:mm:ss)``: once.

Like Scheduler, the invocation is asynchronous: a failing handler is logged, not raised. A clock that
jumps past several due times (a suspended laptop, a test advancing a fake clock) fires once, not once
per missed time. Tests drive it without waiting: :meth:`LocalScheduler.run_due` with a moment of their
choosing, :meth:`LocalScheduler.fire` for one schedule now, or a ``clock`` they advance.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from local.template import FUNCTION_TYPE, Resolver, Template, TemplateError

log = logging.getLogger("local.schedules")

SCHEDULE_TYPE = "AWS::Scheduler::Schedule"
SCHEDULE_EVENT_TYPE = "ScheduleV2"

Invoke = Callable[[str, Mapping[str, Any]], Any]
Clock = Callable[[], datetime]


class ScheduleExpressionError(TemplateError):
    """An expression EventBridge Scheduler would refuse, or one the local scheduler cannot run."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- expressions ---------------------------------------------------------------------------------


class Expression(Protocol):
    @property
    def text(self) -> str:
        """The expression as written."""

    def first(self, start: datetime) -> datetime | None:
        """The first due time after the scheduler starts at ``start``."""

    def following(self, due: datetime, now: datetime) -> datetime | None:
        """The next due time after firing ``due`` at ``now`` (None: never again)."""


_RATE_RE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class RateExpression:
    text: str
    period: timedelta

    @classmethod
    def parse(cls, text: str) -> RateExpression:
        match = _RATE_RE.match(text)
        if not match:
            raise ScheduleExpressionError(
                f"{text!r} is not a rate expression: use rate(<value> <unit>), e.g. rate(5 minutes); "
                "units are minute(s), hour(s), day(s)"
            )
        value, unit = int(match.group(1)), match.group(2)
        if value < 1:
            raise ScheduleExpressionError(f"{text!r}: the rate must be a positive number")
        singular = unit.rstrip("s")
        if (value == 1) != (unit == singular):
            raise ScheduleExpressionError(
                f"{text!r}: use the singular unit for 1 and the plural otherwise (rate(1 {singular}), "
                f"rate({max(value, 2)} {singular}s))"
            )
        return cls(text, value * _RATE_UNITS[singular])

    def first(self, start: datetime) -> datetime | None:
        return start + self.period

    def following(self, due: datetime, now: datetime) -> datetime | None:
        missed = max(0, (now - due) // self.period)
        return due + (missed + 1) * self.period


@dataclass(frozen=True)
class AtExpression:
    text: str
    moment: datetime

    @classmethod
    def parse(cls, text: str, zone: tzinfo) -> AtExpression:
        match = re.fullmatch(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)", text)
        if not match:
            raise ScheduleExpressionError(f"{text!r} is not an at expression: use at(yyyy-mm-ddThh:mm:ss)")
        try:
            moment = datetime.fromisoformat(match.group(1)).replace(tzinfo=zone)
        except ValueError as exc:
            raise ScheduleExpressionError(f"{text!r}: {exc}") from None
        return cls(text, moment)

    def first(self, start: datetime) -> datetime | None:
        return self.moment if self.moment > start else None

    def following(self, due: datetime, now: datetime) -> datetime | None:
        return None


_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
MAX_YEAR = 2199


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)


_FIELDS = (
    _Field("minutes", 0, 59),
    _Field("hours", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, {name.upper(): n for name, n in _MONTHS.items()}),
    _Field("day-of-week", 1, 7, _DAYS),
    _Field("year", 1970, MAX_YEAR),
)


def _value(spec: _Field, text: str, expression: str) -> int:
    upper = text.upper()
    if upper in spec.names:
        return spec.names[upper]
    if not text.isdigit():
        if re.search(r"[LW#]", upper):
            raise ScheduleExpressionError(
                f"{expression!r}: {spec.name} {text!r} uses L, W or #, which the local scheduler does "
                "not run; use values, ranges, lists and steps locally"
            )
        raise ScheduleExpressionError(f"{expression!r}: {spec.name} has {text!r}, not a number or name")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise ScheduleExpressionError(
            f"{expression!r}: {spec.name} {value} is outside {spec.low}-{spec.high}"
        )
    return value


def _parse_field(spec: _Field, text: str, expression: str) -> frozenset[int]:
    if text == "?":
        raise ScheduleExpressionError(f"{expression!r}: '?' is only for day-of-month or day-of-week")
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        if step_text and (not step_text.isdigit() or int(step_text) < 1):
            raise ScheduleExpressionError(f"{expression!r}: {spec.name} step {step_text!r} is not >= 1")
        step = int(step_text) if step_text else 1
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(spec, first, expression), _value(spec, last, expression)
            if low > high:
                raise ScheduleExpressionError(f"{expression!r}: {spec.name} range {base!r} runs backwards")
        else:
            low = _value(spec, base, expression)
            high = spec.high if step_text else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """AWS's six-field cron, evaluated in ``zone`` (wall-clock time, as Scheduler does)."""

    text: str
    zone: tzinfo
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None  # None: '?'
    months: frozenset[int]
    days_of_week: frozenset[int] | None  # None: '?'; 1 is Sunday
    years: frozenset[int]

    @classmethod
    def parse(cls, text: str, zone: tzinfo) -> CronExpression:
        match = re.fullmatch(r"cron\((.*)\)", text)
        parts = match.group(1).split() if match else []
        if len(parts) != 6:
            raise ScheduleExpressionError(
                f"{text!r} is not a cron expression: use cron(minutes hours day-of-month month "
                "day-of-week year), six fields, e.g. cron(0 5 * * ? *)"
            )
        if (parts[2] == "?") == (parts[4] == "?"):
            raise ScheduleExpressionError(
                f"{text!r}: exactly one of day-of-month and day-of-week must be '?' "
                "(e.g. cron(0 5 * * ? *) or cron(0 5 ? * MON-FRI *))"
            )

        def values(index: int) -> frozenset[int]:
            return _parse_field(_FIELDS[index], parts[index], text)

        def optional(index: int) -> frozenset[int] | None:
            return None if parts[index] == "?" else values(index)

        return cls(text, zone, values(0), values(1), optional(2), values(3), optional(4), values(5))

    def _day_matches(self, moment: datetime) -> bool:
        if self.days_of_month is not None:
            return moment.day in self.days_of_month
        assert self.days_of_week is not None
        return (moment.weekday() + 1) % 7 + 1 in self.days_of_week

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching minute strictly after ``moment``."""
        local = moment.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0)
        candidate = local + timedelta(minutes=1)
        while candidate.year <= MAX_YEAR:
            if candidate.year not in self.years:
                later = [year for year in self.years if year > candidate.year]
                if not later:
                    return None
                candidate = datetime(min(later), 1, 1)
            elif candidate.month not in self.months:
                year, month = divmod(candidate.month, 12)
                candidate = datetime(candidate.year + year, month + 1, 1)
            elif not self._day_matches(candidate):
                candidate = datetime(candidate.year, candidate.month, candidate.day) + timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
            elif candidate.minute not in self.minutes:
                candidate += timedelta(minutes=1)
            else:
                return candidate.replace(tzinfo=self.zone).astimezone(UTC)
        return None

    def first(self, start: datetime) -> datetime | None:
        return self.next_after(start)

    def following(self, due: datetime, now: datetime) -> datetime | None:
        return self.next_after(max(due, now))


def parse_expression(text: str, timezone: str = "UTC") -> Expression:
    """An EventBridge Scheduler expression read in ``timezone`` (an IANA name)."""
    zone = time_zone(timezone)
    text = text.strip()
    if text.startswith("rate("):
        return RateExpression.parse(text)
    if text.startswith("cron("):
        return CronExpression.parse(text, zone)
    if text.startswith("at("):
        return AtExpression.parse(text, zone)
    raise ScheduleExpressionError(
        f"{text!r} is not a schedule expression: use rate(...), cron(...) or at(...)"
    )


def time_zone(name: str) -> tzinfo:
    if name in ("", "UTC", "Etc/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleExpressionError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from None


# --- the template's schedules ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSchedule:
    name: str  # the logical id of the schedule
    function: str  # logical id of the function it invokes
    expression: Expression
    event: Any  # the schedule's Input, decoded: what the function receives

    def describe(self) -> str:
        return f"{self.name}: {self.expression.text} -> {self.function}"


def _decode_input(name: str, raw: Any) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise TemplateError(f"schedule {name}: Input must be a string of JSON")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"schedule {name}: Input is not JSON ({exc.msg} at character {exc.pos})"
        ) from None


def _enabled(resolver: Resolver, name: str, resource: Mapping[str, Any], state: Any) -> bool:
    condition = resource.get("Condition")
    if condition is not None and not resolver.condition(str(condition)):
        log.info("schedule %s: condition %s is false, so it does not exist", name, condition)
        return False
    if state is not None and str(resolver.resolve(state)).upper() == "DISABLED":
        log.info("schedule %s is DISABLED", name)
        return False
    return True


def _schedule(
    resolver: Resolver, name: str, function: str, props: Mapping[str, Any], raw_input: Any
) -> LocalSchedule:
    expression = resolver.resolve(props.get("ScheduleExpression"))
    timezone = resolver.resolve(props.get("ScheduleExpressionTimezone") or "UTC")
    if not isinstance(expression, str):
        raise TemplateError(f"schedule {name}: ScheduleExpression must resolve to a string")
    try:
        parsed = parse_expression(expression, str(timezone))
    except ScheduleExpressionError as exc:
        raise ScheduleExpressionError(f"schedule {name}: {exc}") from None
    return LocalSchedule(name, function, parsed, _decode_input(name, resolver.resolve(raw_input)))


def _function_of(arn: Any, arns: Mapping[str, str]) -> str | None:
    if not isinstance(arn, str):
        return None
    # arn:aws:lambda:region:account:function:name[:qualifier]
    unqualified = ":".join(arn.split(":")[:7])
    return arns.get(unqualified)


def schedules_from_template(template: Template, resolver: Resolver) -> list[LocalSchedule]:
    """The schedules the stack deployed with ``resolver``'s parameters would have."""
    arns = {resolver.getatt(logical_id, "Arn"): logical_id for logical_id in template.functions}
    schedules: list[LocalSchedule] = []
    for logical_id, resource in template.resources.items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == FUNCTION_TYPE:
            for event_name, event in (props.get("Events") or {}).items():
                if event.get("Type") != SCHEDULE_EVENT_TYPE:
                    continue
                event_props = event.get("Properties") or {}
                name = f"{logical_id}{event_name}"  # the logical id SAM gives the schedule
                if _enabled(resolver, name, resource, event_props.get("State")):
                    schedules.append(
                        _schedule(resolver, name, logical_id, event_props, event_props.get("Input"))
                    )
        elif resource.get("Type") == SCHEDULE_TYPE:
            if not _enabled(resolver, logical_id, resource, props.get("State")):
                continue
            target = props.get("Target") or {}
            function = _function_of(resolver.resolve(target.get("Arn")), arns)
            if function is None:
                log.warning("schedule %s targets no function of the template; it does not fire", logical_id)
                continue
            schedules.append(_schedule(resolver, logical_id, function, props, target.get("Input")))
    return schedules


# --- the scheduler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """One invocation a schedule made."""

    schedule: str
    function: str
    due: datetime | None  # None: fired on demand (fire())
    fired_at: datetime
    result: Any = None
    error: str | None = None


class LocalScheduler:
    """Fires ``schedules`` on a background thread (``start``/``stop``) as ``clock`` says time passes."""

    def __init__(
        self,
        schedules: Iterable[LocalSchedule],
        invoke: Invoke,
        *,
        clock: Clock = utc_now,
        poll_interval: float = 0.5,
        history_size: int = 100,
    ) -> None:
        self.schedules = {schedule.name: schedule for schedule in schedules}
        self._invoke = invoke
        self._clock = clock
        self._poll_interval = poll_interval
        self._due: dict[str, datetime | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.history: deque[Firing] = deque(maxlen=history_size)

    def start(self) -> Self:
        if self._thread is not None:
            return self
        now = self._clock()
        with self._lock:
            for name, schedule in self.schedules.items():
                self._due[name] = schedule.expression.first(now)
                log.info("schedule %s, next at %s", schedule.describe(), _when(self._due[name]))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="local-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_due(self, name: str) -> datetime | None:
        with self._lock:
            return self._due.get(name)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.run_due()
            except Exception:  # the thread must outlive a bad tick
                log.exception("local scheduler tick failed")

    def run_due(self, now: datetime | None = None) -> list[Firing]:
        """Fire every schedule due at ``now`` (the clock's time if None); the test hook."""
        with self._lock:
            now = self._clock() if now is None else now
            firings = []
            for name, schedule in self.schedules.items():
                due = self._due.get(name)
                if due is None or due > now:
                    continue
                firings.append(self._fire(schedule, due))
                self._due[name] = schedule.expression.following(due, now)
            return firings

    def fire(self, name: str) -> Firing:
        """Invoke one schedule's function with its input now, whatever its expression says."""
        schedule = self.schedules.get(name)
        if schedule is None:
            raise KeyError(f"no schedule {name!r}; there are: {', '.join(self.schedules) or 'none'}")
        with self._lock:
            return self._fire(schedule, None)

    def _fire(self, schedule: LocalSchedule, due: datetime | None) -> Firing:
        fired_at = self._clock()
        try:
            result = self._invoke(schedule.function, schedule.event)
        except Exception as exc:
            # Scheduler invokes asynchronously: Lambda would retry, nobody waits for an answer.
            log.error("schedule %s: %s failed: %s", schedule.name, schedule.function, exc, exc_info=True)
            firing = Firing(
                schedule.name, schedule.function, due, fired_at, error=f"{type(exc).__name__}: {exc}"
            )
        else:
            log.info("schedule %s invoked %s: %s", schedule.name, schedule.function, json.dumps(result)[:500])
            firing = Firing(schedule.name, schedule.function, due, fired_at, result=result)
        self.history.append(firing)
        return firing


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")
