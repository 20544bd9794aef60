"""Request validation: a preheat request and where it wants its blobs, checked field by field."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from preheat.errors import InvalidRequest
from preheat.models.common import Credentials, PreheatType, utcnow
from preheat.models.image import ImageReference, Platform, parse_platforms
from preheat.models.keepwarm import KeepWarm, TaskToken

MAX_URL_LENGTH = 2048
MAX_HEADERS = 32
# The Dragonfly 2 manager's own bounds on a preheat job's targeting (manager/types/job.go).
TARGET_SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
MAX_TARGET_IPS = 100
MAX_TARGET_COUNT = 200
MAX_TARGET_CLUSTERS = 100
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Targeting:
    """Where a request wants its preheat to land (Dragonfly 2 only): the job's ``scope``, its
    ``scheduler_cluster_ids`` and which peers (``ips``, a ``count`` or a ``percentage`` of them).

    Empty fields mean "the deployment's default"; what is given wins over it.
    """

    scope: str | None = None
    cluster_ids: tuple[int, ...] = ()
    ips: tuple[str, ...] = ()
    count: int | None = None
    percentage: int | None = None

    def __bool__(self) -> bool:
        return bool(self.scope or self.cluster_ids or self.ips or self.count or self.percentage)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Targeting:
        """The optional ``scope``, ``clusterIds``, ``ips``, ``count`` and ``percentage`` of a request,
        checked as the Dragonfly 2 manager checks a job's (so that it cannot refuse the job later)."""
        scope = body.get("scope")
        if scope is not None and scope not in TARGET_SCOPES:
            raise InvalidRequest(f"'scope' must be one of {', '.join(TARGET_SCOPES)}, got {_describe(scope)}")
        clusters = _int_list(
            body.get("clusterIds"), "clusterIds", MAX_TARGET_CLUSTERS, "scheduler cluster ids"
        )
        raw_ips = body.get("ips")
        ips: list[str] = []
        if raw_ips is not None:
            if not isinstance(raw_ips, list) or not raw_ips:
                raise InvalidRequest("'ips' must be a non-empty array of peer IP addresses")
            if len(raw_ips) > MAX_TARGET_IPS:
                raise InvalidRequest(
                    f"'ips' names {len(raw_ips)} peers; at most {MAX_TARGET_IPS} are allowed"
                )
            for raw in raw_ips:
                try:
                    address = str(ipaddress.ip_address(raw)) if isinstance(raw, str) else None
                except ValueError:
                    address = None
                if address is None:
                    raise InvalidRequest(f"'ips' entries must be IP addresses, got {_describe(raw)}")
                if address not in ips:
                    ips.append(address)
        count = _bounded_int(body.get("count"), "count", MAX_TARGET_COUNT)
        percentage = _bounded_int(body.get("percentage"), "percentage", 100)
        given = [
            name for name, value in (("ips", ips), ("count", count), ("percentage", percentage)) if value
        ]
        if len(given) > 1:
            raise InvalidRequest(
                f"give only one of 'ips', 'count' and 'percentage', not {' and '.join(given)}"
            )
        return cls(scope, clusters, tuple(ips), count, percentage)

    def to_api(self) -> dict[str, Any]:
        """The request's fields as it named them (what the status answer shows, and the stored form)."""
        data: dict[str, Any] = {}
        if self.scope:
            data["scope"] = self.scope
        if self.cluster_ids:
            data["clusterIds"] = list(self.cluster_ids)
        if self.ips:
            data["ips"] = list(self.ips)
        if self.count:
            data["count"] = self.count
        if self.percentage:
            data["percentage"] = self.percentage
        return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_int(value: Any, name: str, most: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= most:
        raise InvalidRequest(f"'{name}' must be a whole number from 1 to {most}, got {_describe(value)}")
    result: int = value
    return result


def _int_list(value: Any, name: str, most: int, what: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 1 for v in value):
        raise InvalidRequest(f"'{name}' must be a non-empty array of {what} (whole numbers from 1)")
    if len(value) > most:
        raise InvalidRequest(f"'{name}' names {len(value)} {what}; at most {most} are allowed")
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class PreheatRequest:
    """A validated request to preheat an image or a file."""

    type: PreheatType
    url: str
    headers: Credentials = field(default_factory=Credentials)
    image: ImageReference | None = None
    platforms: tuple[Platform, ...] = ()
    targeting: Targeting = field(default_factory=Targeting)
    keep_warm: KeepWarm | None = None
    # A Step Functions task token to answer when the task ends: a credential (see TaskToken).
    task_token: TaskToken | None = None

    @classmethod
    def parse(cls, body: Any) -> PreheatRequest:
        """Validate a decoded JSON body; every problem is an :class:`InvalidRequest` saying how to fix it."""
        if not isinstance(body, dict):
            raise InvalidRequest(
                'request body must be a JSON object like {"type":"image","url":"<host>/<name>:<tag>"}'
            )
        raw_type = body.get("type")
        if raw_type not in (PreheatType.IMAGE.value, PreheatType.FILE.value):
            raise InvalidRequest(f'\'type\' must be "image" or "file", got {_describe(raw_type)}')
        preheat_type = PreheatType(raw_type)
        url = body.get("url")
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequest(f"'url' must be a non-empty string, got {_describe(url)}")
        url = url.strip()
        if len(url) > MAX_URL_LENGTH:
            raise InvalidRequest(f"'url' is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed")
        if _CONTROL_RE.search(url) or " " in url:
            raise InvalidRequest("'url' must not contain spaces or control characters")
        headers = _parse_headers(body.get("header"))
        platforms = parse_platforms(body.get("platform"))
        targeting = Targeting.parse(body)
        keep_warm = KeepWarm.parse(body.get("keepWarm"), utcnow())
        token = TaskToken.parse(body.get("taskToken"))
        if preheat_type is PreheatType.IMAGE:
            image = ImageReference.parse(url)
            return cls(preheat_type, url, headers, image, platforms, targeting, keep_warm, token)
        if platforms:
            raise InvalidRequest("'platform' applies to images only; leave it out for a file")
        _check_file_url(url)
        return cls(preheat_type, url, headers, targeting=targeting, keep_warm=keep_warm, task_token=token)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value[:64])
    return f"a JSON {type(value).__name__.replace('dict', 'object').replace('list', 'array')}"


def _parse_headers(raw: Any) -> Credentials:
    if raw is None:
        return Credentials()
    if not isinstance(raw, dict):
        raise InvalidRequest(
            f"'header' must be a JSON object of header names to string values, got {_describe(raw)}"
        )
    if len(raw) > MAX_HEADERS:
        raise InvalidRequest(f"'header' has {len(raw)} entries; at most {MAX_HEADERS} are allowed")
    for name, value in raw.items():
        if not _HEADER_NAME_RE.match(name):
            raise InvalidRequest(f"'header' name {name[:64]!r} is not a valid HTTP header name")
        # The value is a credential: the message names the header, never the value.
        if not isinstance(value, str):
            raise InvalidRequest(f"'header' value of {name!r} must be a string")
        if _CONTROL_RE.search(value):
            raise InvalidRequest(f"'header' value of {name!r} must not contain control characters")
    return Credentials(raw)


def _check_file_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Its query is left out: it may hold a signature, and the message may be logged.
        raise InvalidRequest(
            f"file url {url.split('?', 1)[0][:200]!r} must be an absolute http:// or https:// URL"
        )
    if parts.username or parts.password:
        raise InvalidRequest("file url must not carry credentials: send them in 'header'")
