"""Keeping a task's content warm: the request's ``keepWarm``, what a task records of it, and the
Step Functions task token a request may carry (a credential, kept out of every answer).

``keepWarm`` asks the service to verify the task every ``every`` until ``until`` and to re-warm
what the peers lost (see ``preheat.keepwarm``). The bounds keep the cost of a forgotten request
small: a check at most every 5 minutes, for at most 30 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from preheat.errors import InvalidRequest
from preheat.models.common import isoformat, parse_isoformat

MIN_EVERY = timedelta(minutes=5)  # the sweeper's period: a shorter one could not be kept anyway
MAX_AHEAD = timedelta(days=30)
# Step Functions' own bound on a task token's length (SendTaskSuccess's taskToken).
MAX_TASK_TOKEN_CHARS = 1024
# Years and months are refused: their length varies, and a check period should not.
_DURATION_RE = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
# What a check found: every blob warm; some missing and re-created; some it could not re-create;
# or it could not tell (a target did not answer: never read as "gone").
WARM, REWARMED, PARTIAL, UNKNOWN = "warm", "rewarmed", "partial", "unknown"


def parse_duration(text: Any) -> timedelta:
    """An ISO 8601 duration of weeks, days, hours, minutes and seconds (``PT6H``, ``P1DT12H``)."""
    if not isinstance(text, str) or len(text) > 32:
        raise InvalidRequest("'keepWarm.every' must be an ISO 8601 duration such as \"PT6H\"")
    match = _DURATION_RE.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise InvalidRequest(
            f"'keepWarm.every' {text!r} is not an ISO 8601 duration of weeks, days, hours, minutes or "
            'seconds (years and months are not accepted), such as "PT6H" or "P1D"'
        )
    parts = {name: float(value) for name, value in match.groupdict().items() if value}
    return timedelta(**parts)


def format_duration(every: timedelta) -> str:
    """The canonical ISO 8601 form of ``every`` (whole seconds)."""
    seconds = int(every.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


@dataclass(frozen=True)
class TaskToken:
    """A Step Functions task token: whoever holds it can end the caller's execution, so it is a
    credential. ``repr`` hides it (a log line or a traceback that prints a task shows nothing)."""

    value: str = field(repr=False)

    @classmethod
    def parse(cls, raw: Any) -> TaskToken | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw or len(raw) > MAX_TASK_TOKEN_CHARS:
            # The message never echoes the value: it is a credential.
            raise InvalidRequest(
                f"'taskToken' must be a Step Functions task token: a string of 1 to {MAX_TASK_TOKEN_CHARS} "
                "characters"
            )
        return cls(raw)


@dataclass(frozen=True)
class KeepWarmCheck:
    """One keep-warm check: when, what it found (``WARM``, ``REWARMED``, ``PARTIAL``, ``UNKNOWN``)
    and the blobs it found missing (``label@target``)."""

    at: datetime
    result: str
    missing: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        return {"at": isoformat(self.at), "result": self.result, "missing": list(self.missing)}

    def to_store(self) -> dict[str, Any]:
        return {"at": isoformat(self.at), "result": self.result, "missing": list(self.missing)}

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> KeepWarmCheck:
        at = parse_isoformat(data.get("at"))
        assert at is not None
        return cls(at, str(data.get("result", UNKNOWN)), tuple(data.get("missing") or ()))


@dataclass(frozen=True)
class KeepWarm:
    """A task kept warm: checked every ``every`` until ``until``; ``next_check_at`` is None once it
    is no longer kept (past ``until``, evicted), ``stopped`` then says why."""

    every: timedelta
    until: datetime
    next_check_at: datetime | None = None
    last_check: KeepWarmCheck | None = None
    stopped: str | None = None

    @classmethod
    def parse(cls, raw: Any, now: datetime) -> KeepWarm | None:
        """The request's ``keepWarm``, checked against ``now``; the first check is one period away."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) - {"every", "until"}:
            raise InvalidRequest(
                '\'keepWarm\' must be an object like {"every": "PT6H", "until": "<RFC 3339 time>"}'
            )
        every = parse_duration(raw.get("every"))
        if every < MIN_EVERY:
            raise InvalidRequest(
                f"'keepWarm.every' {raw.get('every')!r} is shorter than the least period, 5 minutes (PT5M)"
            )
        until = _parse_until(raw.get("until"))
        if until <= now:
            raise InvalidRequest(f"'keepWarm.until' {isoformat(until)} is not in the future")
        if until > now + MAX_AHEAD:
            raise InvalidRequest(
                f"'keepWarm.until' {isoformat(until)} is more than 30 days ahead "
                f"(at most {isoformat(now + MAX_AHEAD)})"
            )
        if now + every > until:
            raise InvalidRequest(
                "'keepWarm.every' is longer than the time until 'keepWarm.until': no check would run"
            )
        return cls(every, until, next_check_at=now + every)

    def due(self, now: datetime) -> bool:
        return self.next_check_at is not None and self.next_check_at <= now

    def after(self, check: KeepWarmCheck) -> KeepWarm:
        """Kept warm after ``check``: the next check one period later, or none past ``until``."""
        following = check.at + self.every
        if following > self.until:
            return replace(self, last_check=check, next_check_at=None, stopped="until reached")
        return replace(self, last_check=check, next_check_at=following)

    def stop(self, reason: str) -> KeepWarm:
        return replace(self, next_check_at=None, stopped=reason)

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "every": format_duration(self.every),
            "until": isoformat(self.until),
            "nextCheckAt": isoformat(self.next_check_at),
            "lastCheck": self.last_check.to_api() if self.last_check else None,
        }
        if self.stopped:
            data["stopped"] = self.stopped
        return data


def _parse_until(raw: Any) -> datetime:
    problem = "'keepWarm.until' must be an RFC 3339 time with its offset, such as \"2026-12-31T00:00:00Z\""
    if not isinstance(raw, str) or len(raw) > 40 or "T" not in raw.upper():
        raise InvalidRequest(problem)
    try:
        moment = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(problem) from None
    if moment.tzinfo is None:
        raise InvalidRequest(problem)
    return moment
