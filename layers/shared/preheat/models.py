"""Domain models: what a caller asks for, what a task is, and what the worker moves between steps.

API shapes (``to_api``) and storage shapes (in the DynamoDB adapter) are converted explicitly at each
boundary so that the domain can change without breaking either.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from preheat.errors import InvalidRequest

MAX_URL_LENGTH = 2048
MAX_HEADERS = 32
MAX_REQUESTED_PLATFORMS = 64
# The Dragonfly 2 manager's own bounds on a preheat job's targeting (manager/types/job.go).
TARGET_SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
MAX_TARGET_IPS = 100
MAX_TARGET_COUNT = 200
MAX_TARGET_CLUSTERS = 100

DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_REGISTRY = "registry-1.docker.io"

# From the distribution reference grammar (github.com/distribution/reference).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PLATFORM_PART_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
# What a platform means when it names no variant (as containerd normalises them).
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}


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


@dataclass(frozen=True, order=True)
class Platform:
    """``os/architecture[/variant]`` as image indexes describe their entries."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART_RE.match(part) for part in parts):
            raise InvalidRequest(
                f"platform {text[:64]!r} is not 'os/architecture' or 'os/architecture/variant', "
                "e.g. 'linux/amd64' or 'linux/arm64/v8'"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def of_index_entry(cls, platform: Mapping[str, Any]) -> Platform:
        variant = platform.get("variant")
        return cls(
            str(platform.get("os", "")).lower(),
            str(platform.get("architecture", "")).lower(),
            str(variant).lower() if variant else None,
        )

    def matches(self, offered: Platform) -> bool:
        """Whether an index entry ``offered`` is what this requested platform asks for.

        A request without a variant takes every variant of its architecture; with one, the
        architecture's default variant and an entry without a variant are the same thing
        (``linux/arm64/v8`` matches an entry that says only ``linux/arm64``).
        """
        if (self.os, self.architecture) != (offered.os, offered.architecture):
            return False
        if self.variant is None:
            return True
        default = _DEFAULT_VARIANTS.get(self.architecture)
        return (self.variant or default) == (offered.variant or default)


def parse_platforms(raw: Any, source: str = "'platform'") -> tuple[Platform, ...]:
    """A platform string, a comma list, or a JSON array of them."""
    if raw is None or raw in ("", []):
        return ()
    items: list[Any]
    if isinstance(raw, str):
        items = [item for item in raw.split(",") if item.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise InvalidRequest(f'{source} must be a string like "linux/amd64" or an array of them')
    if len(items) > MAX_REQUESTED_PLATFORMS:
        raise InvalidRequest(
            f"{source} names {len(items)} platforms; at most {MAX_REQUESTED_PLATFORMS} are allowed"
        )
    platforms: list[Platform] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f'{source} entries must be strings like "linux/arm64"')
        platform = Platform.parse(item)
        if platform not in platforms:
            platforms.append(platform)
    return tuple(platforms)


@dataclass(frozen=True)
class ImageReference:
    """``registry/repository`` plus a tag or a digest (the digest wins when both are given)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tail = f":{self.tag}" if self.tag else ""
        if self.digest:
            tail += f"@{self.digest}"
        return f"{self.registry}/{self.repository}{tail}"

    def base_url(self, insecure: bool) -> str:
        return f"{'http' if insecure else 'https'}://{self.registry}/v2/{self.repository}"

    def manifest_url(self, insecure: bool) -> str:
        return f"{self.base_url(insecure)}/manifests/{self.reference}"

    def blob_url(self, digest: str, insecure: bool) -> str:
        return f"{self.base_url(insecure)}/blobs/{digest}"

    @classmethod
    def parse(cls, url: str) -> ImageReference:
        """Parse the forms users and Harbor send.

        ``host/name:tag``, ``host/name@sha256:...``, ``host/name:tag@sha256:...``,
        ``http(s)://host/v2/name/manifests/<ref>``; a name without a registry is on Docker Hub,
        and a missing tag means ``latest``.
        """
        text = url.strip()
        if "://" in text:
            return cls._parse_manifest_url(text)
        if "/" in text and _looks_like_host(text.split("/", 1)[0]):
            registry, remainder = text.split("/", 1)
        else:
            registry, remainder = "docker.io", text
        name, tag, digest = _split_reference(remainder, url)
        return cls._build(registry, name, tag, digest, url)

    @classmethod
    def _parse_manifest_url(cls, url: str) -> ImageReference:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(
                f"image url {url!r} is not a registry manifest URL: use "
                "'<registry_host>/<name>:<tag>' or 'https://<host>/v2/<name>/manifests/<reference>'"
            )
        if parts.username or parts.password:
            raise InvalidRequest("image url must not carry credentials: send them in 'header'")
        match = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", parts.path)
        if not match:
            raise InvalidRequest(
                f"image url {url!r} has no '/v2/<name>/manifests/<reference>' path: use "
                "'<registry_host>/<name>:<tag>' or the full manifest URL"
            )
        name, ref = match.groups()
        if ref.startswith(("sha256:", "sha512:")):
            return cls._build(parts.netloc, name, None, ref, url)
        return cls._build(parts.netloc, name, ref, None, url)

    @classmethod
    def _build(
        cls, registry: str, name: str, tag: str | None, digest: str | None, original: str
    ) -> ImageReference:
        if not _HOST_RE.match(registry):
            raise InvalidRequest(f"image url {original!r} has an invalid registry host {registry!r}")
        if registry.lower() in DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB_REGISTRY
            if "/" not in name:
                name = f"library/{name}"
        if not _REPOSITORY_RE.match(name):
            raise InvalidRequest(
                f"image url {original!r} has an invalid repository name {name!r}: lowercase letters, "
                "digits and separators (. _ -) in '/'-separated parts"
            )
        if tag is not None and not _TAG_RE.match(tag):
            raise InvalidRequest(
                f"image url {original!r} has an invalid tag {tag!r}: up to 128 letters, digits, "
                "'_', '.' or '-', not starting with '.' or '-'"
            )
        if digest is not None and not _DIGEST_RE.match(digest):
            raise InvalidRequest(
                f"image url {original!r} has an invalid digest {digest!r}: expected "
                "'sha256:' followed by 64 lowercase hex digits"
            )
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry=registry.lower(), repository=name, tag=tag, digest=digest)


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


def _split_reference(remainder: str, original: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
    tag = None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        remainder, tag = remainder.rsplit(":", 1)
    if not remainder:
        raise InvalidRequest(f"image url {original!r} names no image")
    return remainder, tag, digest


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
        if preheat_type is PreheatType.IMAGE:
            return cls(preheat_type, url, headers, ImageReference.parse(url), platforms, targeting)
        if platforms:
            raise InvalidRequest("'platform' applies to images only; leave it out for a file")
        _check_file_url(url)
        return cls(preheat_type, url, headers, targeting=targeting)


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
        raise InvalidRequest(f"file url {url[:200]!r} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidRequest("file url must not carry credentials: send them in 'header'")


@dataclass(frozen=True)
class Blob:
    """One thing a supernode must download: an image layer or config, or a plain file.

    ``headers`` are what the supernode must send to ``url`` (registry auth when the URL is the
    registry itself); they are credentials and never stored.
    """

    url: str
    digest: str | None = None
    size: int | None = None
    media_type: str | None = None
    headers: Credentials = field(default_factory=Credentials)
    filter: tuple[str, ...] = ()
    # Where the request wants it (set by the worker from its task; Dragonfly 2 only).
    targeting: Targeting = field(default_factory=Targeting)

    @property
    def label(self) -> str:
        """How messages name this blob: its digest, else its URL without the query string."""
        return self.digest or self.url.split("?", 1)[0]


@dataclass(frozen=True)
class ImageResolution:
    """What the registry said an image is: its blobs, and which platform images they came from."""

    blobs: list[Blob]
    platforms: tuple[str, ...] = ()  # the platform images taken from an index (empty for one manifest)
    skipped_attestations: int = 0


@dataclass(frozen=True)
class BlobProgress:
    """A blob on one supernode, as the task records it."""

    label: str
    target: str
    state: BlobState = BlobState.PENDING
    digest: str | None = None
    size: int | None = None
    supernode_task_id: str | None = None
    error: str | None = None
    # The URL handed over (signature parameters left out) and the task id a node computes for it.
    url: str | None = None
    node_task_id: str | None = None

    def with_state(self, state: BlobState, error: str | None = None) -> BlobProgress:
        return replace(self, state=state, error=error)

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"digest": self.digest} if self.digest else {"url": self.label}
        if self.size is not None:
            data["size"] = self.size
        data["supernode"] = _without_userinfo(self.target)
        if self.url:
            data["preheatedUrl"] = self.url
        if self.node_task_id:
            data["nodeTaskId"] = self.node_task_id
        data["state"] = self.state.value
        if self.error:
            data["error"] = self.error
        return data


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


@dataclass(frozen=True)
class LayerCounts:
    total: int
    succeeded: int
    failed: int
    pending: int

    @classmethod
    def of(cls, blobs: tuple[BlobProgress, ...]) -> LayerCounts:
        """A layer counts as succeeded only when it is warm on every supernode it was sent to."""
        by_label: dict[str, list[BlobState]] = {}
        for blob in blobs:
            by_label.setdefault(blob.label, []).append(blob.state)
        succeeded = sum(all(s is BlobState.SUCCESS for s in states) for states in by_label.values())
        failed = sum(any(s is BlobState.FAILED for s in states) for states in by_label.values())
        total = len(by_label)
        return cls(total, succeeded, failed, total - succeeded - failed)


TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# How a step that will be retried marks the task's msg: the error it met, kept for the end.
RETRYING_PREFIX = "retrying after: "


def is_task_id(text: str) -> bool:
    return TASK_ID_RE.match(text) is not None


@dataclass(frozen=True)
class Task:
    """A preheat task. ``check_seq`` orders the worker's check messages (see worker.py)."""

    task_id: str
    type: PreheatType
    url: str
    status: TaskStatus
    created_at: datetime
    deadline: datetime
    finished_at: datetime | None = None
    message: str | None = None
    blobs: tuple[BlobProgress, ...] = ()
    dispatched: bool = False
    check_seq: int = 0
    # The token of the one check message the task waits for (see worker.py): a check that carries
    # another is a duplicate's, and is dropped.
    check_chain: str = ""
    platforms: tuple[str, ...] = ()  # requested; empty means every platform of an index
    resolved_platforms: tuple[str, ...] = ()
    skipped_attestations: int = 0
    targeting: Targeting = field(default_factory=Targeting)
    # The counts alone, when the blobs were not read (a listing reads a summary, not the progress).
    layer_counts: LayerCounts | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.status is TaskStatus.RUNNING and now >= self.deadline

    def waiting_for(self) -> str:
        """What a RUNNING task is waiting for, as the end of a message."""
        if not self.dispatched and not self.blobs:
            source = "the registry" if self.type is PreheatType.IMAGE else "the file's server"
            return f"waiting for {source} to resolve {self.url}"
        pending = sorted({blob.label for blob in self.blobs if blob.state is BlobState.PENDING})
        if not pending:
            return "waiting for its next step"
        shown = ", ".join(pending[:10]) + (f" and {len(pending) - 10} more" if len(pending) > 10 else "")
        return f"waiting for the supernodes; still pending: {shown}"

    def last_error(self) -> str | None:
        """The last error a RUNNING task met: its step's, or else a pending blob's failed look."""
        if self.message and self.message.startswith(RETRYING_PREFIX):
            return self.message.removeprefix(RETRYING_PREFIX)
        for blob in self.blobs:
            if blob.state is BlobState.PENDING and blob.error:
                return f"{blob.label} on {blob.target}: {blob.error}"
        return self.message or None

    def timed_out_message(self) -> str:
        """Why a task ended at its deadline: what it was waiting for, and the last error it met."""
        message = (
            f"timed out: still RUNNING at the deadline {self.deadline.isoformat()}, {self.waiting_for()}"
        )
        last = self.last_error()
        if last:
            message += f"; last error: {last}"
        return message

    def to_api(self, detail: bool = False) -> dict[str, Any]:
        """The status answer's ``data``: the spec's ``taskId`` and ``status``, then extras
        (``detail`` lists every blob on every supernode)."""
        data: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status.value,
            "type": self.type.value,
            "url": self.url,
            "startTime": isoformat(self.created_at),
            "finishTime": isoformat(self.finished_at),
        }
        if self.platforms:
            data["platform"] = list(self.platforms)
        if self.resolved_platforms:
            data["platforms"] = list(self.resolved_platforms)
        if self.skipped_attestations:
            data["skippedAttestations"] = self.skipped_attestations
        data.update(self.targeting.to_api())
        counts = LayerCounts.of(self.blobs) if self.blobs else self.layer_counts
        if counts is not None:
            data["layers"] = {
                "total": counts.total,
                "succeeded": counts.succeeded,
                "failed": counts.failed,
                "pending": counts.pending,
            }
        if self.message:
            data["msg"] = self.message
        if detail:
            data["blobs"] = [blob.to_api() for blob in self.blobs]
        return data


class Step(StrEnum):
    START = "start"  # resolve the blobs, then dispatch them to the supernodes
    CHECK = "check"  # poll the supernodes for the dispatched blobs


@dataclass(frozen=True)
class WorkerMessage:
    """The SQS message body that carries a task from one step to the next.

    Only ``start`` carries the caller's credentials (SQS encrypts bodies at rest); ``check``
    messages need none, so credentials live no longer than the first step.
    """

    task_id: str
    step: Step
    seq: int = 0
    headers: Credentials = field(default_factory=Credentials)
    chain: str = ""  # a check's token, equal to the task's check_chain while it is the current one

    def to_json(self) -> str:
        body: dict[str, Any] = {"v": 1, "taskId": self.task_id, "step": self.step.value, "seq": self.seq}
        if self.chain:
            body["chain"] = self.chain
        if self.headers:
            body["header"] = self.headers.reveal()
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerMessage:
        try:
            body = json.loads(text)
            return cls(
                task_id=str(body["taskId"]),
                step=Step(body["step"]),
                seq=int(body.get("seq", 0)),
                headers=Credentials(body.get("header") or {}),
                chain=str(body.get("chain") or ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Never echo the body: it may hold credentials.
            raise ValueError(f"malformed worker message ({type(exc).__name__})") from None
