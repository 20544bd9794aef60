"""The registry client: turns an image (or a file URL) into the blobs a supernode must download.

By default (``PREHEAT_LAYER_URLS=registry``) a blob is the registry blob URL nodes ask for, under
the host nodes name, with the credentials the supernode needs (the caller's, or the token exchanged
for the manifest): no request per blob, and a file is its URL as given. Every URL handed over is
checked against the outbound policy first. What follows about blob redirects is the spec's literal
mode (``storage``), where the storage URL each blob redirects to is handed over instead.

It speaks the Distribution pull API the way real registries answer (see the project's reference
notes on registries): one ``Accept`` header naming every manifest type, Bearer token exchange, and
blob redirects to signed storage URLs resolved with GET (a URL presigned for HEAD fails a GET).

An image index (or Docker manifest list) gives every platform image it lists, or those matching
the requested platforms (a requested platform it lacks is a PermanentFailure naming those it has);
BuildKit's attestation entries are skipped and counted. The manifests of an index's platforms, and
then the redirects of all blobs, are resolved concurrently on a bounded pool over one session,
which keeps its connections: blob URLs are probed for their first byte (``Range: bytes=0-0``), so
an answer does not leave a whole blob unread on a connection that would then have to be dropped.

Every connection goes through :class:`~preheat.adapters.http.GuardedPoolManager`: an address the outbound
policy refuses (loopback, link-local such as the instance metadata service, private, ...) is never
connected to, whether the caller named it, a registry redirected to it, or DNS answered with it;
the URL the caller named must also be on ``PREHEAT_ALLOWED_REGISTRIES`` when that is set.

Caller headers are credentials. They go to the registry's origin and nowhere else (a storage host
that receives the registry's ``Authorization`` rejects the request, and must not see it anyway); no
message quotes them, and text a server answers with is scrubbed of them before it is quoted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urljoin, urlsplit

from preheat.adapters.http import (
    GuardedPoolManager,
    HttpClient,
    InvalidHeader,
    InvalidUrl,
    RequestError,
    Response,
)
from preheat.adapters.http import loads as _loads
from preheat.adapters.quoting import failure_reason, scrub, secrets_of, truncate
from preheat.adapters.retry import RetryPolicy, parse_retry_after
from preheat.errors import PermanentFailure, PreheatError, TransientFailure
from preheat.models import Blob, Credentials, ImageReference, ImageResolution, Platform
from preheat.network import AddressRefused, OutboundPolicy, find_refusal
from preheat.settings import Settings

logger = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

# One header listing every type: without it, Distribution hides OCI manifests (404), converts
# schema2 to schema1 on the fly (another digest) and refuses manifest lists (400).
MANIFEST_ACCEPT = ", ".join(
    (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED)
)
_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1})
_MANIFEST_TYPES = _INDEX_TYPES | _IMAGE_TYPES | _SCHEMA1_TYPES
# Content types a registry may answer with for a manifest that names its type only in its body, or
# not at all (OCI made ``mediaType`` optional at first).
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
# Layers whose blob lives outside the registry (Windows base layers): fetched from their ``urls``.
_FOREIGN_LAYER_RE = re.compile(r"foreign|nondistributable")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LAYERS = 1000
MAX_PLATFORMS = 64
# Distinct blobs one task preheats, over all its platforms: a 1000-layer image and its config fit,
# and so does the task's record of every blob on every supernode (DynamoDB's 400 KB item).
MAX_BLOBS = 1024
MAX_REDIRECTS = 10
# Blob and file URLs are probed for their first byte: a server that honours ranges answers 206 with
# that byte, and the connection goes back to the pool instead of being dropped with a whole blob
# unread. Range is never part of a URL's signature (S3, GCS, Azure, CloudFront, OSS sign the host,
# the path and their own headers only), so a presigned URL accepts it.
PROBE_RANGE = "bytes=0-0"
# An index may point at another index (rare, but valid OCI); deeper nesting is refused.
MAX_INDEX_DEPTH = 2
MAX_TOKEN_BYTES = 1024 * 1024
# The caller's credentials, a cached token, a fetched one, and one more should a concurrent
# refresh swap the cached token meanwhile.
MAX_AUTH_ROUNDS = 4
MAX_ERROR_BYTES = 64 * 1024
MAX_PLATFORM_NAME_CHARS = 64

# Requests in flight at once per resolution (manifests of an index, then blobs). A blob costs two
# round trips (the registry's redirect, then the storage's answer): 101 blobs at 64 a time are 2
# waves, 0.2 s at 50 ms a response, where 32 a time would take 4 (and each blob's dispatch waits
# for its wave). Each is one small ranged GET: no more load on a registry than one pull.
DEFAULT_MAX_WORKERS = 64
DEFAULT_ATTEMPTS = 4
OUT_OF_TIME = "the step's time ran out before it was done"
DEFAULT_BACKOFF_SECONDS = 0.2
DEFAULT_RETRY_AFTER_CAP_SECONDS = 10.0
# The Docker token spec: a token without ``expires_in`` lives 60 seconds.
DEFAULT_TOKEN_SECONDS = 60
TOKEN_CACHE_SIZE = 256
TOKEN_FETCH_LOCKS = 16

# Query parameters that sign a storage URL, grouped by scheme: a group counts only when its marker
# is in the URL, so that short names (``sp``, ``se``) are not dropped from ordinary URLs. The
# supernode leaves these out when it derives the task id, so two signatures of one blob are one
# download. Names are compared ignoring case; prefixes are vendor headers hoisted into the query.
SIGNATURE_PARAM_GROUPS: dict[str, frozenset[str]] = {
    # S3 SigV2, CloudFront, GCS V2, Alibaba OSS V1, Huawei OBS V1.
    "signature": frozenset(
        [
            "signature",
            "expires",
            "policy",
            "key-pair-id",
            "awsaccesskeyid",
            "googleaccessid",
            "ossaccesskeyid",
            "accesskeyid",
            "security-token",
        ]
    ),
    # Azure Blob SAS (GHCR's pkg-containers, ACR).
    "sig": frozenset(
        [
            "sig",
            "se",
            "st",
            "sp",
            "sv",
            "sr",
            "spr",
            "sip",
            "si",
            "ss",
            "srt",
            "sdd",
            "skoid",
            "sktid",
            "skt",
            "ske",
            "sks",
            "skv",
            "ses",
        ]
    ),
    # Tencent COS.
    "q-signature": frozenset(
        [
            "q-sign-algorithm",
            "q-ak",
            "q-sign-time",
            "q-key-time",
            "q-header-list",
            "q-url-param-list",
            "q-signature",
        ]
    ),
    # Docker Hub's Cloudflare storage: ``verify=<expiry>-<signature>``.
    "verify": frozenset({"verify"}),
}
SIGNATURE_PARAM_PREFIXES = ("x-amz-", "x-goog-", "x-oss-", "x-obs-")

# Caller headers that describe the request framing, or make the answer partial or conditional,
# rather than the caller: sending them would break the request (a manifest cut to a range, a 304),
# never authorize it, and a supernode sent them would cache part of a blob.
_FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# A token goes into a header: printable ASCII without spaces, so it cannot smuggle another header.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
# WWW-Authenticate: a scheme or parameter name, then ``=value`` or ``="quoted, value"``.
_CHALLENGE_TOKEN_RE = re.compile(r"[\s,]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)")
_CHALLENGE_PARAM_RE = re.compile(r'\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")

T = TypeVar("T")
R = TypeVar("R")
Origin = tuple[str, str, int]
_TokenKey = tuple[str, str, str, str]


def _now() -> float:
    """The clock token lifetimes are measured with; a function so that tests can move it."""
    return time.monotonic()


class _Answer(Enum):
    """How a 401 challenge was answered."""

    SWITCHED = "switched"  # to the caller's credentials or a cached token
    FETCHED = "fetched"  # to a token just fetched from the realm


class _Retry(Exception):
    """One attempt failed in a way worth another (5xx, 429, timeout, broken connection)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Descriptor:
    digest: str
    size: int | None = None
    media_type: str | None = None
    # Where a foreign layer is downloaded from instead of the registry.
    url: str | None = None


@dataclass(frozen=True)
class _Entry:
    """A manifest an index lists, with every platform the index lists it under (two entries may
    name one manifest)."""

    descriptor: _Descriptor
    platforms: tuple[Platform, ...]

    @property
    def may_be_index(self) -> bool:
        media_type = self.descriptor.media_type
        return media_type is None or media_type in _INDEX_TYPES


@dataclass(frozen=True)
class _Manifest:
    blobs: tuple[_Descriptor, ...] = ()
    children: tuple[_Entry, ...] = ()
    attestations: int = 0  # index entries skipped as BuildKit attestations

    @property
    def is_index(self) -> bool:
        return bool(self.children)


@dataclass
class _Selection:
    """Which platform images of an index one resolution takes, and what the index offered."""

    attestations: int = 0
    offered: set[Platform] = field(default_factory=set)
    taken: set[Platform] = field(default_factory=set)
    matched: set[Platform] = field(default_factory=set)  # requested platforms some entry matched

    def choose(self, entry: _Entry, requested: Sequence[Platform]) -> bool:
        """Whether to fetch the entry: a nested index always (its entries are chosen in turn),
        an image when nothing was requested or a requested platform matches one of its own."""
        if entry.descriptor.media_type in _INDEX_TYPES:
            return True
        self.offered.update(entry.platforms)
        if not requested:
            return True
        hits = {wanted for wanted in requested for offered in entry.platforms if wanted.matches(offered)}
        self.matched |= hits
        return bool(hits)

    def take(self, entry: _Entry, requested: Sequence[Platform]) -> None:
        self.taken.update(
            offered
            for offered in entry.platforms
            if not requested or any(wanted.matches(offered) for wanted in requested)
        )

    def names(self) -> tuple[str, ...]:
        """The platform images taken, as ``os/architecture[/variant]``, sorted."""
        return tuple(sorted({_platform_name(platform) for platform in self.taken if str(platform)}))

    def check(self, requested: Sequence[Platform], label: str) -> None:
        missing = [str(wanted) for wanted in requested if wanted not in self.matched]
        if not missing:
            return
        offered = sorted(
            {_platform_name(platform) or "(an entry without a platform)" for platform in self.offered}
        )
        what = f"platform {missing[0]} is" if len(missing) == 1 else f"platforms {', '.join(missing)} are"
        raise PermanentFailure(
            f"{what} not in the index of {label}; it has {', '.join(offered) or 'no platform image'}"
        )


@dataclass
class _Target:
    """One resolution's view of the server the caller's headers belong to.

    ``authorization`` starts as the caller's and becomes a Bearer token once one is exchanged; it
    is shared by the threads resolving blobs, hence the lock."""

    origin: Origin
    name: str  # "registry HOST" or "server HOST", for messages
    repository: str | None  # None for a plain file server: no token exchange there
    extra: dict[str, str]
    caller_auth: str | None
    authorization: str | None
    secrets: list[str]
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When the resolution must be over (``_now()``): no request starts after it, none outlasts it.
    deadline: float | None = None

    @classmethod
    def of(
        cls,
        url: str,
        name: str,
        repository: str | None,
        headers: Credentials,
        time_budget_seconds: float | None = None,
    ) -> _Target:
        revealed = headers.reveal()
        caller_auth = headers.get_ci("Authorization")
        extra = {
            key: value
            for key, value in revealed.items()
            if key.lower() != "authorization" and key.lower() not in _FRAMING_HEADERS
        }
        return cls(
            origin=_origin(url),
            name=name,
            repository=repository,
            extra=extra,
            caller_auth=caller_auth,
            authorization=caller_auth,
            secrets=secrets_of(revealed.values()),
            deadline=None if time_budget_seconds is None else _now() + time_budget_seconds,
        )

    def time_left(self, timeout: float) -> float:
        """``timeout``, or less when the deadline is nearer; _Retry (and no more retries) once it
        has passed."""
        if self.deadline is None:
            return timeout
        left = self.deadline - _now()
        if left <= 0:
            self.cancelled.set()
            raise _Retry(OUT_OF_TIME)
        return min(timeout, left)

    def owns(self, url: str) -> bool:
        return _origin(url) == self.origin

    def current_authorization(self) -> str | None:
        with self.lock:
            return self.authorization

    def use(self, authorization: str, secret: str) -> None:
        with self.lock:
            self.authorization = authorization
            if secret not in self.secrets:
                self.secrets.extend(secrets_of([secret, authorization]))

    def request_headers(self, authorization: str | None, own: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's headers, then ours (``own``, e.g. Accept) in place of any of the same name."""
        ours = {name.lower() for name in own or {}}
        headers = {name: value for name, value in self.extra.items() if name.lower() not in ours}
        headers.update(own or {})
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def credentials(self) -> Credentials:
        """What the supernode must send to a URL on this target's origin."""
        return Credentials(self.request_headers(self.current_authorization()))

    def refused(self, status: int, detail: str) -> PermanentFailure:
        where = f" for repository {self.repository}" if self.repository else ""
        if self.caller_auth is None:
            return PermanentFailure(
                f"{self.name} requires credentials{where} and the request's 'header' has no "
                f"Authorization (HTTP {status}{detail})"
            )
        return PermanentFailure(f"{self.name} refused the credentials{where} (HTTP {status}{detail})")

    def scrub(self, text: str) -> str:
        # Replace before cutting: a cut could leave half a secret that no longer matches.
        with self.lock:
            secrets = list(self.secrets)
        return truncate(scrub(text, secrets))


class _TokenCache:
    """Bearer tokens by (realm, service, scope, caller fingerprint), until ``expires_in`` passes.

    The fingerprint keeps one caller's token (from their Basic credentials) away from another
    caller of the same warm Lambda, who may have none."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self._size = size
        self._tokens: OrderedDict[_TokenKey, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetch_locks = [threading.Lock() for _ in range(TOKEN_FETCH_LOCKS)]

    def fetching(self, key: _TokenKey) -> threading.Lock:
        """The lock to hold while fetching the token for ``key``: threads that meet the same
        challenge at once (a token expiring under 16 blob requests) fetch it once between them."""
        return self._fetch_locks[hash(key) % len(self._fetch_locks)]

    def get(self, key: _TokenKey) -> str | None:
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            token, expires_at = entry
            if _now() >= expires_at:
                del self._tokens[key]
                return None
            return token

    def put(self, key: _TokenKey, token: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[key] = (token, _now() + lifetime)
            self._tokens.move_to_end(key)
            while len(self._tokens) > self._size:
                self._tokens.popitem(last=False)

    def discard(self, key: _TokenKey, token: str) -> None:
        with self._lock:
            entry = self._tokens.get(key)
            if entry is not None and entry[0] == token:
                del self._tokens[key]


class HttpRegistryClient:
    """Resolves images through the Distribution pull API, and files through their redirects."""

    def __init__(
        self,
        settings: Settings,
        http: HttpClient | None = None,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        retry_after_cap_seconds: float = DEFAULT_RETRY_AFTER_CAP_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1 or max_workers < 1:
            raise ValueError("attempts and max_workers must be at least 1")
        self._settings = settings
        self._policy = OutboundPolicy.of(settings)
        # A client passed in is used as given (its pool is the caller's to guard).
        self._http = http if http is not None else _new_client(max_workers, self._policy)
        self._max_workers = max_workers
        self._retry = RetryPolicy(attempts, backoff_seconds, retry_after_cap_seconds=retry_after_cap_seconds)
        self._sleep = sleep
        self._timeout = settings.registry_timeout_seconds
        self._tokens = _TokenCache()
        # The last Bearer challenge seen per (origin, repository): lets the next resolution of the
        # same repository start with a cached token instead of a 401 round trip.
        self._challenges: OrderedDict[tuple[Origin, str], tuple[str, str, str]] = OrderedDict()
        self._challenges_lock = threading.Lock()

    # -- the port ------------------------------------------------------------------------------

    def resolve_image(
        self,
        image: ImageReference,
        headers: Credentials,
        platforms: Sequence[Platform] = (),
        on_blob: Callable[[Blob], None] | None = None,
        time_budget_seconds: float | None = None,
    ) -> ImageResolution:
        insecure = self._settings.is_insecure(image.registry)
        base_url = image.base_url(insecure)
        label = str(image)
        self._policy.check_url(base_url, f"manifest for {label}")
        target = _Target.of(
            base_url, f"registry {image.registry}", image.repository, headers, time_budget_seconds
        )
        self._reuse_token(target)

        body, content_type = self._fetch_manifest(target, base_url, image.reference, f"manifest for {label}")
        if image.digest:
            _verify_digest(body, image.digest, f"manifest for {label}")
        root = _parse_manifest(body, content_type, f"manifest for {label}", target)
        if root.is_index:
            descriptors, selection = self._resolve_index(target, base_url, label, root, platforms)
        else:
            # One image is what it is: a requested platform cannot narrow it, nor should it fail it.
            descriptors, selection = list(root.blobs), _Selection()

        unique: dict[str, _Descriptor] = {}
        for descriptor in descriptors:
            unique.setdefault(descriptor.digest, descriptor)
        if len(unique) > MAX_BLOBS:
            raise PermanentFailure(
                f"{label} has {len(unique)} distinct blobs over its platform images; at most {MAX_BLOBS} "
                "are preheated per task: name the platforms you need in 'platform'"
            )

        if self._settings.layer_urls == "registry":
            blobs = self._registry_blobs(image, insecure, target, list(unique.values()), on_blob, label)
            return ImageResolution(
                blobs=blobs,
                platforms=selection.names(),
                skipped_attestations=selection.attestations,
            )

        def resolve_blob(descriptor: _Descriptor) -> Blob:
            start = descriptor.url or image.blob_url(descriptor.digest, insecure)
            final = self._resolve_url(target, start, f"blob {descriptor.digest} of {label}")
            blob = Blob(
                url=final,
                digest=descriptor.digest,
                size=descriptor.size,
                media_type=descriptor.media_type,
                headers=target.credentials() if target.owns(final) else Credentials(),
                filter=signature_params(final),
            )
            if on_blob is not None:
                on_blob(blob)
            return blob

        blobs = self._map(target, resolve_blob, list(unique.values()))
        return ImageResolution(
            blobs=blobs,
            platforms=selection.names(),
            skipped_attestations=selection.attestations,
        )

    def _registry_blobs(
        self,
        image: ImageReference,
        insecure: bool,
        target: _Target,
        descriptors: list[_Descriptor],
        on_blob: Callable[[Blob], None] | None,
        label: str,
    ) -> list[Blob]:
        """The registry blob URLs nodes ask for (``PREHEAT_LAYER_URLS=registry``), under the host
        nodes name, with what the supernode needs to download them: the caller's headers with its
        Authorization, or the Bearer token exchanged for the manifest. No request per blob: the
        manifest names every blob, and a supernode's download reports one that is missing."""
        node_image = replace(image, registry=self._settings.node_host(image.registry))
        credentials = target.credentials()
        checked: set[Origin] = set()
        blobs: list[Blob] = []
        for descriptor in descriptors:
            what = f"blob {descriptor.digest} of {label}"
            if descriptor.url:
                # A foreign layer lives elsewhere: its URL as the manifest gives it, and no credentials.
                url, headers = descriptor.url, Credentials()
            else:
                url, headers = node_image.blob_url(descriptor.digest, insecure), credentials
            if _origin(url) not in checked:
                self._policy.check_handover(url, what)
                checked.add(_origin(url))
            blob = Blob(
                url=url,
                digest=descriptor.digest,
                size=descriptor.size,
                media_type=descriptor.media_type,
                headers=headers,
            )
            if on_blob is not None:
                on_blob(blob)
            blobs.append(blob)
        return blobs

    def _resolve_index(
        self,
        target: _Target,
        base_url: str,
        label: str,
        root: _Manifest,
        requested: Sequence[Platform],
    ) -> tuple[list[_Descriptor], _Selection]:
        """The blobs of the platform images an index lists (narrowed to ``requested`` if given),
        fetching the manifests of each level of the index concurrently."""
        selection = _Selection(attestations=root.attestations)
        descriptors: list[_Descriptor] = []
        pending = list(root.children)
        depth = fetched = 0

        def fetch_child(child: _Entry) -> _Manifest:
            digest = child.descriptor.digest
            what = f"manifest {digest} (in the index of {label})"
            child_body, child_type = self._fetch_manifest(target, base_url, digest, what)
            _verify_digest(child_body, digest, what)
            return _parse_manifest(child_body, child_type, what, target)

        while pending:
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise PermanentFailure(
                    f"manifest for {label} nests image indexes more than {MAX_INDEX_DEPTH} deep"
                )
            chosen = [entry for entry in pending if selection.choose(entry, requested)]
            if not any(entry.may_be_index for entry in chosen):
                # No deeper level can offer more platforms: a missing one fails before any fetch.
                selection.check(requested, label)
            fetched += len(chosen)
            if fetched > MAX_PLATFORMS:
                raise PermanentFailure(
                    f"manifest for {label} lists more than {MAX_PLATFORMS} platform images "
                    f"({fetched}); refusing to preheat them all"
                )
            manifests = self._map(target, fetch_child, chosen)
            pending = []
            for entry, manifest in zip(chosen, manifests, strict=True):
                selection.attestations += manifest.attestations
                if manifest.is_index:
                    pending.extend(manifest.children)
                else:
                    selection.take(entry, requested)
                    descriptors.extend(manifest.blobs)
        selection.check(requested, label)
        return descriptors, selection

    def resolve_file(self, url: str, headers: Credentials, time_budget_seconds: float | None = None) -> Blob:
        what = f"file {_display_url(url)}"
        self._policy.check_url(url, what)
        target = _Target.of(url, f"server {_display_host(url)}", None, headers, time_budget_seconds)
        if self._settings.layer_urls == "registry":
            # Nodes run dfget with the URL they were told about: that URL is the task, redirects
            # and all (the supernode follows them itself).
            self._policy.check_handover(url, what)
            return Blob(url=url, headers=target.credentials())
        final = self._resolve_url(target, url, what)
        return Blob(
            url=final,
            headers=target.credentials() if target.owns(final) else Credentials(),
            filter=signature_params(final),
        )

    # -- manifests -----------------------------------------------------------------------------

    def _fetch_manifest(self, target: _Target, base_url: str, reference: str, what: str) -> tuple[bytes, str]:
        url = f"{base_url}/manifests/{reference}"

        def attempt() -> tuple[bytes, str]:
            response, final = self._follow(target, url, what, {"Accept": MANIFEST_ACCEPT})
            with response:
                if response.status_code != 200:
                    raise self._failure(target, response, what, final)
                body = self._read(response, MAX_MANIFEST_BYTES, what, target)
                return body, response.headers.get("Content-Type", "")

        return self._retrying(target, f"could not fetch the {what} from {target.name}", attempt)

    def _read(self, response: Response, limit: int, what: str, target: _Target) -> bytes:
        """The body, streamed and cut off at ``limit`` so that a huge answer costs at most that."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PermanentFailure(f"{what} is {int(declared)} bytes long; at most {limit} are accepted")
        # The read timeout bounds each chunk; this bounds a server that trickles bytes forever.
        deadline = _now() + 3 * self._timeout
        if target.deadline is not None:
            deadline = min(deadline, target.deadline)
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise PermanentFailure(f"{what} is larger than {limit} bytes, the most accepted")
                chunks.append(chunk)
                if _now() > deadline:
                    raise _Retry(f"the answer took longer than {3 * self._timeout:g}s to arrive")
        except RequestError as exc:
            reason = failure_reason(exc, f"{self._timeout:g}", target.scrub)
            raise _Retry(f"the answer was cut off ({reason})") from None
        return b"".join(chunks)

    # -- auth ----------------------------------------------------------------------------------

    def _reuse_token(self, target: _Target) -> None:
        if target.repository is None or not _exchangeable(target.caller_auth):
            return
        with self._challenges_lock:
            challenge = self._challenges.get((target.origin, target.repository))
        if challenge is None:
            return
        token = self._tokens.get(_token_key(challenge, target.caller_auth))
        if token is not None:
            target.use(f"Bearer {token}", token)

    def _answer_challenge(
        self, target: _Target, header: str, sent: str | None, may_fetch: bool
    ) -> _Answer | None:
        """Switch the target to other credentials after a 401; None when there are none to try.

        A cached token is tried before a new one is fetched (another thread may have refreshed it)."""
        challenges = _parse_challenges(header)
        bearer = challenges.get("bearer")
        if target.repository is not None and bearer and bearer.get("realm"):
            if not _exchangeable(target.caller_auth):
                # A ready token (Harbor's) is used as given: there is nothing to exchange it for.
                return None
            challenge = (
                bearer["realm"],
                bearer.get("service", ""),
                bearer.get("scope") or f"repository:{target.repository}:pull",
            )
            key = _token_key(challenge, target.caller_auth)
            token = self._tokens.get(key)
            if token is not None and f"Bearer {token}" == sent:
                self._tokens.discard(key, token)
                token = None
            answer = _Answer.SWITCHED
            if token is None:
                if not may_fetch:
                    return None
                with self._tokens.fetching(key):
                    # Another thread may have fetched one while this one waited for the lock.
                    token = self._tokens.get(key)
                    if token is None or f"Bearer {token}" == sent:
                        token, lifetime = self._fetch_token(target, *challenge)
                        self._tokens.put(key, token, lifetime)
                        answer = _Answer.FETCHED
            self._remember_challenge(target, challenge)
            target.use(f"Bearer {token}", token)
            return answer
        if "basic" in challenges and target.caller_auth and sent != target.caller_auth:
            target.use(target.caller_auth, target.caller_auth)
            return _Answer.SWITCHED
        return None

    def _remember_challenge(self, target: _Target, challenge: tuple[str, str, str]) -> None:
        assert target.repository is not None
        key = (target.origin, target.repository)
        with self._challenges_lock:
            self._challenges[key] = challenge
            self._challenges.move_to_end(key)
            while len(self._challenges) > TOKEN_CACHE_SIZE:
                self._challenges.popitem(last=False)

    def _fetch_token(self, target: _Target, realm: str, service: str, scope: str) -> tuple[str, float]:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PermanentFailure(
                f"{target.name} names a token service that is not an http(s) URL: {truncate(realm)!r}"
            )
        params = [("service", service)] if service else []
        params += [("scope", item) for item in scope.split()]
        # Only Basic credentials are exchanged; other caller headers stay with the registry.
        headers = {"Authorization": target.caller_auth} if target.caller_auth else {}
        what = f"token for repository {target.repository} from {parts.netloc}"
        try:
            response = self._get(realm, headers, target, params=params)
        except AddressRefused as exc:
            raise AddressRefused(f"could not fetch the {what}: {exc}") from None
        with response:
            if response.status_code in (401, 403):
                raise target.refused(response.status_code, _error_detail(response, target))
            if response.status_code != 200:
                raise PermanentFailure(
                    f"token service {parts.netloc} answered HTTP {response.status_code} for repository "
                    f"{target.repository}{_error_detail(response, target)}"
                )
            body = self._read(response, MAX_TOKEN_BYTES, what, target)
        try:
            answer = _loads(body)
        except ValueError:
            answer = None
        token = None
        if isinstance(answer, dict):
            token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token.strip()):
            raise PermanentFailure(f"token service {parts.netloc} answered without a usable token")
        assert isinstance(answer, dict)
        expires_in = answer.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
            else DEFAULT_TOKEN_SECONDS
        )
        return token.strip(), lifetime

    # -- redirects -----------------------------------------------------------------------------

    def _resolve_url(self, target: _Target, url: str, what: str) -> str:
        """The URL the redirects from ``url`` end at, checked to answer 2xx."""

        def attempt() -> str:
            response, final = self._follow(target, url, what, {"Range": PROBE_RANGE})
            # 416: the range does not fit an empty blob, which is there all the same.
            if not 200 <= response.status_code < 300 and response.status_code != 416:
                with response:
                    raise self._failure(target, response, what, final)
            # The body is the blob, which the supernode downloads: read only if it is tiny (the
            # one byte asked for, where the server honours ranges).
            _release(response)
            return final

        return self._retrying(target, f"could not resolve the {what}", attempt)

    def _follow(self, target: _Target, url: str, what: str, headers: dict[str, str]) -> tuple[Response, str]:
        """The first answer that is not a redirect, and its URL; ``headers`` go to every hop.

        Redirects are followed by hand: the target's headers go only to the target's origin (S3
        refuses a request that carries both a registry token and a signature), and each hop is a
        GET because storage URLs are presigned for the method the registry was asked with. Each hop
        is checked anew: its scheme here, its address by the session's adapter when it connects."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                if target.owns(current):
                    response = self._get_authorized(target, current, headers)
                else:
                    response = self._get(current, dict(headers), target)
            except AddressRefused as exc:
                # Raised afresh: the message names hosts and addresses, never the URL's query.
                raise AddressRefused(f"could not fetch the {what}: {exc}") from None
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECT_CODES or not location:
                return response, current
            _release(response)
            current = urljoin(current, location)
            if urlsplit(current).scheme not in ("http", "https"):
                raise PermanentFailure(f"the {what} redirects to a URL that is not http(s)")
        raise PermanentFailure(f"the {what} redirects more than {MAX_REDIRECTS} times (a redirect loop?)")

    def _get_authorized(self, target: _Target, url: str, extra: dict[str, str]) -> Response:
        """GET on the target's origin, answering its 401 challenges.

        Each credential is tried once, and at most one token is fetched: a fresh token that is
        refused means the credentials behind it are, and asking again would get another such."""
        tried: set[str | None] = set()
        fetched = False
        detail = ""
        for _ in range(MAX_AUTH_ROUNDS):
            sent = target.current_authorization()
            tried.add(sent)
            headers = target.request_headers(sent, extra)
            response = self._get(url, headers, target)
            if response.status_code != 401:
                return response
            with response:
                challenge = response.headers.get("WWW-Authenticate", "")
                detail = _error_detail(response, target)
            answer = self._answer_challenge(target, challenge, sent, may_fetch=not fetched)
            if answer is None or target.current_authorization() in tried:
                break
            fetched = fetched or answer is _Answer.FETCHED
        raise target.refused(401, detail)

    # -- one request, retries ------------------------------------------------------------------

    def _get(
        self,
        url: str,
        headers: dict[str, str],
        target: _Target,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> Response:
        """One GET, streamed and without redirects; 429, 5xx and network failures raise _Retry."""
        failure = None
        timeout = target.time_left(self._timeout)
        try:
            response = self._http.get(
                url, headers=headers, params=params, stream=True, timeout=(timeout, timeout)
            )
        except InvalidUrl:
            failure = PermanentFailure(f"{_display_url(url)} is not a URL that can be fetched")
        except InvalidHeader:
            failure = PermanentFailure(
                "a value in 'header' cannot be sent: HTTP header values must be printable Latin-1 text"
            )
        except RequestError as exc:
            refused = find_refusal(exc)
            if refused is None:
                raise _Retry(failure_reason(exc, f"{timeout:g}", target.scrub)) from None
            failure = AddressRefused(str(refused))
        if failure is not None:
            # Raised out of the handler: the exception it replaces holds the header value or URL,
            # and would otherwise ride along as __context__ into logs and error reporters.
            raise failure
        if response.status_code == 429 or response.status_code >= 500:
            with response:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                reason = f"HTTP {response.status_code}{_error_detail(response, target)}"
            raise _Retry(f"{urlsplit(url).netloc} answered {reason}", retry_after)
        return response

    def _retrying(self, target: _Target, what: str, attempt: Callable[[], T]) -> T:
        reason = ""
        retry_after: float | None = None
        number = 0
        for number in range(1, self._retry.attempts + 1):
            try:
                return attempt()
            except _Retry as exc:
                reason, retry_after = exc.reason, exc.retry_after
                if number == self._retry.attempts or target.cancelled.is_set():
                    break
                delay = self._retry.delay(number, exc.retry_after)
                logger.info(
                    "retrying registry request",
                    extra={"what": what, "reason": reason, "attempt": number, "delay": round(delay, 3)},
                )
                self._sleep(delay)
        if target.deadline is not None and _now() >= target.deadline and reason != OUT_OF_TIME:
            # Stopped by the deadline (here, or in a thread that hit it first), not by this error.
            reason = f"{reason}; {OUT_OF_TIME}"
        tries = f"{number} attempt" + ("s" if number > 1 else "")
        # The server's Retry-After, if it sent one, also spaces the step's own retry.
        raise TransientFailure(f"{what}: {reason} (gave up after {tries})", retry_after=retry_after)

    def _map(self, target: _Target, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``function`` over ``items`` on a bounded pool; the first failure is raised, and the
        items not started yet are dropped (those running stop retrying)."""
        if len(items) <= 1:
            return [function(item) for item in items]
        pool = ThreadPoolExecutor(min(self._max_workers, len(items)), thread_name_prefix="registry")
        try:
            futures: list[Future[R]] = [pool.submit(function, item) for item in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future in done and future.exception() is not None:
                    target.cancelled.set()
                    raise _first_failure(futures, done)
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _failure(
        self, target: _Target, response: Response, what: str, url: str | None = None
    ) -> PermanentFailure:
        """The error for a final answer that is neither a success nor worth a retry."""
        code = response.status_code
        detail = _error_detail(response, target)
        on_target = url is None or target.owns(url)
        if code in (401, 403) and on_target:
            return target.refused(code, detail)
        where = target.name if on_target else f"storage {urlsplit(url or '').netloc}"
        if code == 404:
            return PermanentFailure(
                f"{what} not found on {where} ({detail.removeprefix(': ') or 'HTTP 404'})"
            )
        return PermanentFailure(f"{where} answered HTTP {code} for the {what}{detail}")


# -- helpers -------------------------------------------------------------------------------------


def signature_params(url: str) -> tuple[str, ...]:
    """The names of the signature query parameters in ``url``, as spelled there, in order."""
    names: list[str] = []
    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in names:
            names.append(name)
    present = {name.lower() for name in names}
    signing = {
        member
        for marker, members in SIGNATURE_PARAM_GROUPS.items()
        if marker in present
        for member in members
    }
    return tuple(
        name for name in names if name.lower() in signing or name.lower().startswith(SIGNATURE_PARAM_PREFIXES)
    )


def _new_client(max_workers: int, policy: OutboundPolicy) -> HttpClient:
    # Enough pooled connections per host for every worker thread, so that they reuse connections
    # instead of opening (and discarding) one each. Every connection the pool makes is checked
    # against the outbound policy; it speaks http and https only.
    return HttpClient(GuardedPoolManager(policy, num_pools=16, maxsize=max(max_workers, 16)))


def _release(response: Response) -> None:
    """Close a response, reading a short body first so that its connection goes back to the pool
    (closing one with unread bytes discards the connection)."""
    with response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) <= MAX_ERROR_BYTES:
            # On failure the connection is merely not reused.
            with contextlib.suppress(RequestError):
                _ = response.content


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _exchangeable(authorization: str | None) -> bool:
    """Whether a token may be asked for with these credentials: anonymous or Basic."""
    return authorization is None or authorization.strip().lower().startswith("basic ")


def _token_key(challenge: tuple[str, str, str], authorization: str | None) -> _TokenKey:
    fingerprint = hashlib.sha256(authorization.encode()).hexdigest() if authorization else ""
    return (*challenge, fingerprint)


def _parse_challenges(header: str) -> dict[str, dict[str, str]]:
    """``WWW-Authenticate`` as {scheme: {param: value}}; quoted values may hold commas (scopes)."""
    challenges: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    position = 0
    while position < len(header):
        match = _CHALLENGE_TOKEN_RE.match(header, position)
        if not match:
            break
        name, position = match.group(1), match.end()
        value = _CHALLENGE_PARAM_RE.match(header, position)
        if value and current is not None:
            text = value.group(1)
            current[name.lower()] = (
                _QUOTED_PAIR_RE.sub(r"\1", text) if text is not None else value.group(2) or ""
            )
            position = value.end()
        elif value:
            position = value.end()  # a parameter before any scheme: malformed, ignored
        else:
            current = challenges.setdefault(name.lower(), {})
    return challenges


def _parse_manifest(body: bytes, content_type: str, what: str, target: _Target) -> _Manifest:
    try:
        document = _loads(body)
    except ValueError:
        raise PermanentFailure(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise PermanentFailure(f"{what} is not a JSON object")
    header_type = content_type.split(";", 1)[0].strip().lower()
    body_type = document.get("mediaType")
    if header_type in _MANIFEST_TYPES:
        media_type = header_type
    elif isinstance(body_type, str) and body_type in _MANIFEST_TYPES:
        media_type = body_type
    elif document.get("schemaVersion") == 1 and "fsLayers" in document:
        media_type = DOCKER_SCHEMA1
    elif header_type in _GENERIC_TYPES and body_type is None and isinstance(document.get("manifests"), list):
        media_type = OCI_INDEX
    elif header_type in _GENERIC_TYPES and body_type is None and isinstance(document.get("layers"), list):
        media_type = OCI_MANIFEST
    else:
        shown = body_type if isinstance(body_type, str) and body_type else header_type or "(none)"
        raise PermanentFailure(
            f"{what} has the unsupported media type {target.scrub(shown)!r}; supported: "
            f"{', '.join(sorted(_MANIFEST_TYPES))}"
        )
    if media_type in _INDEX_TYPES:
        return _index_children(document, what, target)
    if media_type in _SCHEMA1_TYPES:
        return _Manifest(blobs=_schema1_blobs(document, what))
    return _Manifest(blobs=_image_blobs(document, what))


def _index_children(document: dict[str, Any], what: str, target: _Target) -> _Manifest:
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise PermanentFailure(f"{what} is an index without a 'manifests' list")
    # By digest: two entries naming one manifest (same image, two platform spellings) fetch it once.
    children: dict[str, tuple[_Descriptor, list[Platform]]] = {}
    attestations = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise PermanentFailure(f"{what} has an index entry that is not an object")
        if _is_attestation(entry):
            attestations += 1
            continue
        descriptor = _descriptor(entry, what)
        if descriptor.media_type is not None and descriptor.media_type not in _MANIFEST_TYPES:
            raise PermanentFailure(
                f"{what} lists {descriptor.digest} with the unsupported media type "
                f"{target.scrub(descriptor.media_type)!r}"
            )
        platform = entry.get("platform")
        listed = children.setdefault(descriptor.digest, (descriptor, []))[1]
        offered = Platform.of_index_entry(platform if isinstance(platform, dict) else {})
        if offered not in listed:
            listed.append(offered)
        if len(children) > MAX_PLATFORMS:
            raise PermanentFailure(
                f"{what} lists more than {MAX_PLATFORMS} platform images; refusing to preheat them all"
            )
    if not children:
        raise PermanentFailure(f"{what} is an index that lists no platform image")
    return _Manifest(
        children=tuple(_Entry(descriptor, tuple(listed)) for descriptor, listed in children.values()),
        attestations=attestations,
    )


def _platform_name(platform: Platform) -> str:
    """``os/architecture[/variant]``, cut short: the registry wrote it, and messages quote it."""
    name = str(platform)
    return name if len(name) <= MAX_PLATFORM_NAME_CHARS else f"{name[:MAX_PLATFORM_NAME_CHARS]}..."


def _is_attestation(entry: dict[str, Any]) -> bool:
    """BuildKit's provenance/SBOM entries: indexed like platforms, but no image to run."""
    annotations = entry.get("annotations")
    if (
        isinstance(annotations, dict)
        and annotations.get("vnd.docker.reference.type") == "attestation-manifest"
    ):
        return True
    platform = entry.get("platform")
    return (
        isinstance(platform, dict)
        and platform.get("os") == "unknown"
        and platform.get("architecture") == "unknown"
    )


def _image_blobs(document: dict[str, Any], what: str) -> tuple[_Descriptor, ...]:
    config = document.get("config")
    layers = document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise PermanentFailure(f"{what} is an image manifest without 'config' and 'layers'")
    if len(layers) > MAX_LAYERS:
        raise PermanentFailure(f"{what} has {len(layers)} layers; at most {MAX_LAYERS} are supported")
    blobs = [_descriptor(config, what)]
    for layer in layers:
        if not isinstance(layer, dict):
            raise PermanentFailure(f"{what} has a layer that is not an object")
        blobs.append(_descriptor(layer, what))
    return tuple(blobs)


def _schema1_blobs(document: dict[str, Any], what: str) -> tuple[_Descriptor, ...]:
    layers = document.get("fsLayers")
    if not isinstance(layers, list):
        raise PermanentFailure(f"{what} is a schema1 manifest without 'fsLayers'")
    digests: dict[str, None] = {}
    for layer in layers:
        digest = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise PermanentFailure(f"{what} has a layer without a valid 'blobSum'")
        # Schema1 repeats the empty layer once per history entry; it is downloaded once.
        digests[digest] = None
        if len(digests) > MAX_LAYERS:
            raise PermanentFailure(
                f"{what} has more than {MAX_LAYERS} layers; at most {MAX_LAYERS} are supported"
            )
    return tuple(_Descriptor(digest) for digest in digests)


def _descriptor(entry: dict[str, Any], what: str) -> _Descriptor:
    digest = entry.get("digest")
    # Digests become URL paths: a value that could escape the path is refused, not quoted.
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise PermanentFailure(f"{what} has a descriptor without a valid 'digest'")
    size = entry.get("size")
    media_type = entry.get("mediaType")
    media_type = media_type if isinstance(media_type, str) and media_type else None
    url = None
    urls = entry.get("urls")
    if media_type and _FOREIGN_LAYER_RE.search(media_type) and isinstance(urls, list):
        url = next(
            (item for item in urls if isinstance(item, str) and item.startswith(("http://", "https://"))),
            None,
        )
    return _Descriptor(
        digest=digest,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        media_type=media_type,
        url=url,
    )


def _verify_digest(body: bytes, expected: str, what: str) -> None:
    algorithm = expected.split(":", 1)[0]
    try:
        actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
    except ValueError:
        raise PermanentFailure(f"{what}: digest algorithm {algorithm!r} is not supported") from None
    if actual == expected:
        return
    payload = _schema1_payload(body)
    if payload is not None and f"{algorithm}:{hashlib.new(algorithm, payload).hexdigest()}" == expected:
        return
    raise PermanentFailure(
        f"{what}: the registry answered a manifest whose digest is {actual}, not the requested {expected}"
    )


def _schema1_payload(body: bytes) -> bytes | None:
    """A signed schema1 manifest's digest covers its JWS payload: the body without ``signatures``,
    rebuilt from the ``formatLength`` and ``formatTail`` of its protected header."""
    try:
        document = _loads(body)
        protected = document["signatures"][0]["protected"]
        header = _loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
        tail = header["formatTail"]
        length = int(header["formatLength"])
        return body[:length] + base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None


def _error_detail(response: Response, target: _Target) -> str:
    """``": CODE: message"`` from a Distribution ``{"errors": [...]}`` body (or S3's XML), scrubbed."""
    try:
        raw = response.read(MAX_ERROR_BYTES)
    except Exception:  # the detail is a courtesy; the status code already tells
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    parts: list[str] = []
    try:
        errors = _loads(text).get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list):
        for error in errors[:3]:
            if isinstance(error, dict):
                code, message = error.get("code"), error.get("message")
                parts.append(": ".join(str(item) for item in (code, message) if item))
    else:
        code_match = re.search(r"<Code>([^<]{1,100})</Code>", text)
        message_match = re.search(r"<Message>([^<]{1,300})</Message>", text)
        if code_match:
            parts.append(": ".join(m.group(1) for m in (code_match, message_match) if m))
    detail = "; ".join(part for part in parts if part)
    return f": {target.scrub(detail)}" if detail else ""


def _first_failure(futures: list[Future[Any]], done: set[Future[Any]]) -> BaseException:
    """The first failed future in submission order, preferring a permanent failure: retrying the
    whole task cannot help while one blob is missing for good."""
    errors = [f.exception() for f in futures if f in done and f.exception() is not None]
    for error in errors:
        if isinstance(error, PermanentFailure):
            return error
    for error in errors:
        if isinstance(error, PreheatError):
            return error
    first = errors[0]
    assert first is not None
    return first


def _display_url(url: str) -> str:
    """The URL without its query (signatures) or user info, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{_display_host(url)}{parts.path}"


def _display_host(url: str) -> str:
    """``host[:port]`` without user info."""
    scheme, host, port = _origin(url)
    host = f"[{host}]" if ":" in host else host
    return host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
