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

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

from preheat.adapters.fail_fast import map_fail_fast
from preheat.adapters.http import (
    GuardedPoolManager,
    HttpClient,
    InvalidHeader,
    InvalidUrl,
    RequestError,
    Response,
)
from preheat.adapters.quoting import failure_reason
from preheat.adapters.registry_auth import Answer, RegistryAuth
from preheat.adapters.registry_manifests import (
    MANIFEST_ACCEPT,
    MAX_PLATFORMS,
    Descriptor,
    IndexEntry,
    Manifest,
    Selection,
    parse_manifest,
    verify_digest,
)
from preheat.adapters.registry_target import (
    MAX_ERROR_BYTES,
    OUT_OF_TIME,
    AttemptFailed,
    Origin,
    Target,
    display_host,
    display_url,
    error_detail,
    origin_of,
)
from preheat.adapters.storage_signatures import signature_params
from preheat.errors import PermanentFailure, TransientFailure
from preheat.handover import peer_credentials
from preheat.models import Blob, Credentials, ImageReference, ImageResolution, Platform
from preheat.network import AddressRefused, OutboundPolicy, Resolver, find_refusal
from preheat.ports import UNBOUNDED, ResolveOptions
from preheat.retry import RetryPolicy, parse_retry_after
from preheat.settings import Settings

logger = logging.getLogger(__name__)

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
# The caller's credentials, a cached token, a fetched one, and one more should a concurrent
# refresh swap the cached token meanwhile.
MAX_AUTH_ROUNDS = 4

# Requests in flight at once per resolution (manifests of an index, then blobs). A blob costs two
# round trips (the registry's redirect, then the storage's answer): 101 blobs at 64 a time are 2
# waves, 0.2 s at 50 ms a response, where 32 a time would take 4 (and each blob's dispatch waits
# for its wave). Each is one small ranged GET: no more load on a registry than one pull.
DEFAULT_MAX_WORKERS = 64
# Manifests of an index fetched at once: each may weigh PREHEAT_MAX_MANIFEST_BYTES and cost several
# times that to parse, so a hostile index of 64 costs 4 of them at a time, not 64 (a real index
# lists a handful of platforms: 4 at a time is one or two waves).
MAX_MANIFESTS_IN_FLIGHT = 4
# Hosts one image's blobs may be handed over from: the registry, and the hosts of its foreign layers
# (Windows base layers name one or two). Each is a DNS lookup before the handover, one after another,
# so that a manifest naming 40 hosts cannot spend the step's time on lookups.
MAX_HANDOVER_ORIGINS = 8
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_SECONDS = 0.2
DEFAULT_RETRY_AFTER_CAP_SECONDS = 10.0
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")
R = TypeVar("R")


def _now() -> float:
    """The clock token lifetimes are measured with; a function so that tests can move it."""
    return time.monotonic()


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
        resolver: Resolver | None = None,
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
        self._resolver = resolver  # the handover checks' DNS lookups (None: socket.getaddrinfo)
        self._timeout = settings.registry_timeout_seconds
        # ``_now`` looked up at each call, so that tests can move the clock.
        self._auth = RegistryAuth(self._get, self._read, lambda: _now())  # noqa: PLW0108

    # -- the port ------------------------------------------------------------------------------

    def resolve_image(
        self,
        image: ImageReference,
        headers: Credentials,
        platforms: Sequence[Platform] = (),
        options: ResolveOptions = UNBOUNDED,
    ) -> ImageResolution:
        insecure = self._settings.is_insecure(image.registry)
        base_url = image.base_url(insecure)
        label = str(image)
        self._policy.check_url(base_url, f"manifest for {label}")
        target = Target.of(
            base_url,
            f"registry {image.registry}",
            image.repository,
            headers,
            options.time_budget_seconds,
            _now,
        )
        self._auth.reuse_token(target)

        body, content_type = self._fetch_manifest(target, base_url, image.reference, f"manifest for {label}")
        if image.digest:
            verify_digest(body, image.digest, f"manifest for {label}")
        root = parse_manifest(body, content_type, f"manifest for {label}", target.scrub)
        # Each blob's platform manifest, by digest (the first that lists it).
        sources: dict[str, str] = {}
        if root.is_index:
            descriptors, selection = self._resolve_index(target, base_url, label, root, platforms, sources)
        else:
            # One image is what it is: a requested platform cannot narrow it, nor should it fail it.
            descriptors, selection = list(root.blobs), Selection()
            root_digest = image.digest or f"sha256:{hashlib.sha256(body).hexdigest()}"
            sources.update((descriptor.digest, root_digest) for descriptor in descriptors)

        unique: dict[str, Descriptor] = {}
        for descriptor in descriptors:
            unique.setdefault(descriptor.digest, descriptor)
        if len(unique) > MAX_BLOBS:
            raise PermanentFailure(
                f"{label} has {len(unique)} distinct blobs over its platform images; at most {MAX_BLOBS} "
                "are preheated per task: name the platforms you need in 'platform'"
            )

        if self._settings.layer_urls == "registry":
            blobs = self._registry_blobs(
                image, insecure, target, list(unique.values()), options, label, sources
            )
            return ImageResolution(
                blobs=blobs,
                platforms=selection.names(),
                skipped_attestations=selection.attestations,
            )

        def resolve_blob(descriptor: Descriptor) -> Blob:
            start = descriptor.url or image.blob_url(descriptor.digest, insecure)
            final = self._resolve_url(target, start, f"blob {descriptor.digest} of {label}")
            blob = Blob(
                url=final,
                digest=descriptor.digest,
                size=descriptor.size,
                media_type=descriptor.media_type,
                headers=self._peer_credentials(target, options) if target.owns(final) else Credentials(),
                filter=signature_params(final),
            )
            options.found(blob)
            return blob

        self._refresh_for_handover(target)
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
        target: Target,
        descriptors: list[Descriptor],
        options: ResolveOptions,
        label: str,
        sources: dict[str, str],
    ) -> list[Blob]:
        """The registry blob URLs nodes ask for (``PREHEAT_LAYER_URLS=registry``), under the host
        nodes name, with what the supernode needs to download them: the caller's headers with its
        Authorization, or the Bearer token exchanged for the manifest. No request per blob: the
        manifest names every blob, and a supernode's download reports one that is missing."""
        node_image = replace(image, registry=self._settings.node_host(image.registry))
        self._refresh_for_handover(target)
        credentials = self._peer_credentials(target, options)
        handed: list[tuple[Descriptor, str, Credentials]] = [
            # A foreign layer lives elsewhere: its URL as the manifest gives it, and no credentials.
            (descriptor, descriptor.url, Credentials())
            if descriptor.url
            else (descriptor, node_image.blob_url(descriptor.digest, insecure), credentials)
            for descriptor in descriptors
        ]
        origins = {origin_of(url) for _, url, _ in handed}
        if len(origins) > MAX_HANDOVER_ORIGINS:
            raise PermanentFailure(
                f"{label} has layers on {len(origins)} hosts; at most {MAX_HANDOVER_ORIGINS} are "
                "checked and handed over per image"
            )
        checked: set[Origin] = set()
        blobs: list[Blob] = []
        for descriptor, url, headers in handed:
            what = f"blob {descriptor.digest} of {label}"
            if origin_of(url) not in checked:
                # Each lookup may take seconds: none starts once the step's time is up.
                if target.deadline is not None and _now() >= target.deadline:
                    raise TransientFailure(f"could not check the hosts of {label}: {OUT_OF_TIME}")
                self._policy.check_handover(url, what, self._resolver)
                checked.add(origin_of(url))
            blob = Blob(
                url=url,
                digest=descriptor.digest,
                size=descriptor.size,
                media_type=descriptor.media_type,
                headers=headers,
                manifest_url=f"{node_image.base_url(insecure)}/manifests/{sources[descriptor.digest]}",
            )
            options.found(blob)
            blobs.append(blob)
        return blobs

    def _resolve_index(
        self,
        target: Target,
        base_url: str,
        label: str,
        root: Manifest,
        requested: Sequence[Platform],
        sources: dict[str, str],
    ) -> tuple[list[Descriptor], Selection]:
        """The blobs of the platform images an index lists (narrowed to ``requested`` if given),
        fetching the manifests of each level of the index concurrently."""
        selection = Selection(attestations=root.attestations)
        descriptors: list[Descriptor] = []
        pending = list(root.children)
        depth = fetched = 0

        def fetch_child(child: IndexEntry) -> Manifest:
            digest = child.descriptor.digest
            what = f"manifest {digest} (in the index of {label})"
            child_body, child_type = self._fetch_manifest(target, base_url, digest, what)
            verify_digest(child_body, digest, what)
            return parse_manifest(child_body, child_type, what, target.scrub)

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
            manifests = self._map(target, fetch_child, chosen, MAX_MANIFESTS_IN_FLIGHT)
            pending = []
            for entry, manifest in zip(chosen, manifests, strict=True):
                selection.attestations += manifest.attestations
                if manifest.is_index:
                    pending.extend(manifest.children)
                else:
                    selection.take(entry, requested)
                    descriptors.extend(manifest.blobs)
                    for descriptor in manifest.blobs:
                        sources.setdefault(descriptor.digest, entry.descriptor.digest)
        selection.check(requested, label)
        return descriptors, selection

    def resolve_file(self, url: str, headers: Credentials, options: ResolveOptions = UNBOUNDED) -> Blob:
        what = f"file {display_url(url)}"
        self._policy.check_url(url, what)
        target = Target.of(
            url, f"server {display_host(url)}", None, headers, options.time_budget_seconds, _now
        )
        if self._settings.layer_urls == "registry":
            # Nodes run dfget with the URL they were told about: that URL is the task, redirects
            # and all (the supernode follows them itself).
            self._policy.check_handover(url, what, self._resolver)
            return Blob(url=url, headers=self._peer_credentials(target, options))
        final = self._resolve_url(target, url, what)
        return Blob(
            url=final,
            headers=self._peer_credentials(target, options) if target.owns(final) else Credentials(),
            filter=signature_params(final),
        )

    def _refresh_for_handover(self, target: Target) -> None:
        """A token too old to hand over fetched anew, with the retries of any registry request."""

        def attempt() -> None:
            self._auth.refresh_for_handover(target)

        self._retrying(target, f"could not refresh the token for {target.name}", attempt)

    def _peer_credentials(self, target: Target, options: ResolveOptions) -> Credentials:
        """The headers the supernode gets for a URL on the target's origin (see preheat.handover)."""
        return peer_credentials(
            target.credentials(),
            stored=options.stored_credentials,
            scoped_token=target.scoped_token(),
            settings=self._settings,
        )

    # -- manifests -----------------------------------------------------------------------------

    def _fetch_manifest(self, target: Target, base_url: str, reference: str, what: str) -> tuple[bytes, str]:
        url = f"{base_url}/manifests/{reference}"

        def attempt() -> tuple[bytes, str]:
            response, final = self._follow(target, url, what, {"Accept": MANIFEST_ACCEPT})
            with response:
                if response.status_code != 200:
                    raise self._failure(target, response, what, final)
                body = self._read(response, self._settings.max_manifest_bytes, what, target)
                return body, response.headers.get("Content-Type", "")

        return self._retrying(target, f"could not fetch the {what} from {target.name}", attempt)

    def _read(self, response: Response, limit: int, what: str, target: Target) -> bytes:
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
                    raise AttemptFailed(f"the answer took longer than {3 * self._timeout:g}s to arrive")
        except RequestError as exc:
            reason = failure_reason(exc, f"{self._timeout:g}", target.scrub)
            raise AttemptFailed(f"the answer was cut off ({reason})") from None
        return b"".join(chunks)

    # -- redirects -----------------------------------------------------------------------------

    def _resolve_url(self, target: Target, url: str, what: str) -> str:
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

    def _follow(self, target: Target, url: str, what: str, headers: dict[str, str]) -> tuple[Response, str]:
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

    def _get_authorized(self, target: Target, url: str, extra: dict[str, str]) -> Response:
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
                detail = error_detail(response, target.scrub)
            answer = self._auth.answer_challenge(target, challenge, sent, may_fetch=not fetched)
            if answer is None or target.current_authorization() in tried:
                break
            fetched = fetched or answer is Answer.FETCHED
        raise target.refused(401, detail)

    # -- one request, retries ------------------------------------------------------------------

    def _get(
        self,
        url: str,
        headers: dict[str, str],
        target: Target,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> Response:
        """One GET, streamed and without redirects; 429, 5xx and network failures raise AttemptFailed."""
        failure = None
        timeout = target.time_left(self._timeout)
        try:
            response = self._http.get(
                url, headers=headers, params=params, stream=True, timeout=(timeout, timeout)
            )
        except InvalidUrl:
            failure = PermanentFailure(f"{display_url(url)} is not a URL that can be fetched")
        except InvalidHeader:
            failure = PermanentFailure(
                "a value in 'header' cannot be sent: HTTP header values must be printable Latin-1 text"
            )
        except RequestError as exc:
            refused = find_refusal(exc)
            if refused is None:
                raise AttemptFailed(failure_reason(exc, f"{timeout:g}", target.scrub)) from None
            failure = AddressRefused(str(refused))
        if failure is not None:
            # Raised out of the handler: the exception it replaces holds the header value or URL,
            # and would otherwise ride along as __context__ into logs and error reporters.
            raise failure
        if response.status_code == 429 or response.status_code >= 500:
            with response:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                reason = f"HTTP {response.status_code}{error_detail(response, target.scrub)}"
            raise AttemptFailed(f"{urlsplit(url).netloc} answered {reason}", retry_after)
        return response

    def _retrying(self, target: Target, what: str, attempt: Callable[[], T]) -> T:
        reason = ""
        retry_after: float | None = None
        number = 0
        for number in range(1, self._retry.attempts + 1):
            try:
                return attempt()
            except AttemptFailed as exc:
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

    def _map(
        self, target: Target, function: Callable[[T], R], items: Sequence[T], workers: int | None = None
    ) -> list[R]:
        """``function`` over ``items`` on a pool of at most ``workers`` threads (the client's
        ``max_workers`` by default); the first failure is raised, and the items not started yet are
        dropped (those running stop retrying)."""
        size = min(self._max_workers, workers or self._max_workers)
        return map_fail_fast(function, items, size, target.cancelled, "registry")

    def _failure(
        self, target: Target, response: Response, what: str, url: str | None = None
    ) -> PermanentFailure:
        """The error for a final answer that is neither a success nor worth a retry."""
        code = response.status_code
        detail = error_detail(response, target.scrub)
        on_target = url is None or target.owns(url)
        if code in (401, 403) and on_target:
            return target.refused(code, detail)
        where = target.name if on_target else f"storage {urlsplit(url or '').netloc}"
        if code == 404:
            return PermanentFailure(
                f"{what} not found on {where} ({detail.removeprefix(': ') or 'HTTP 404'})"
            )
        return PermanentFailure(f"{where} answered HTTP {code} for the {what}{detail}")


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
