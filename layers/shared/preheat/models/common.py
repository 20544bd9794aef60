"""The vocabulary every model shares: times as the API writes them, the enums, and credentials."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, the form the API answers with."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_isoformat(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class PreheatType(StrEnum):
    IMAGE = "image"
    FILE = "file"


class TaskStatus(StrEnum):
    """The three statuses the spec allows, nothing else ever reaches a caller."""

    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"

    @property
    def terminal(self) -> bool:
        return self is not TaskStatus.RUNNING


class BlobState(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class Credentials(Mapping[str, str]):
    """The request's ``header``: credentials for the remote server.

    Its ``repr`` and ``str`` never show values, so it can pass through logs, tracebacks and
    f-strings without leaking; code that must send the values calls :meth:`reveal`.
    """

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._headers = dict(headers or {})

    def __getitem__(self, key: str) -> str:
        return self._headers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return f"Credentials(names={sorted(self._headers)!r}, values=<redacted>)"

    __str__ = __repr__

    def reveal(self) -> dict[str, str]:
        return dict(self._headers)

    def get_ci(self, name: str) -> str | None:
        """Header lookup ignoring case, as HTTP does."""
        lowered = name.lower()
        for key, value in self._headers.items():
            if key.lower() == lowered:
                return value
        return None
