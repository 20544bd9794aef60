"""How the reference Dragonfly 2 scheduler turns an image's manifest URL into blob URLs, as the real
one does (dragonfly ``internal/job/image.go`` ``CreatePreheatRequestsByManifestURL``, ``pkg/oci``):

* The URL must match ``^(.*)://(.*)/v2/(.*)/manifests/(.*)`` (scheme, registry, repository,
  reference), else "parse access url failed".
* An ``Authorization`` in the request's ``header`` is used as it is, for the manifests and for the
  peers: a Basic one is not exchanged for a token. Without one, the registry is pinged
  (``GET /v2/``); a Bearer challenge is answered with a token for ``repository:<name>:pull`` from its
  realm (``username``/``password`` as Basic credentials, anonymous without them), a Basic challenge
  with ``username``/``password`` themselves.
* The manifest is asked for with every manifest media type in ``Accept``; an index (or Docker
  manifest list) is narrowed to ``platform`` (default ``linux/amd64``) and each match resolved in
  turn; an image manifest gives its config and its layers, in that order.
* The peers get the request's headers with ``Authorization`` set to the token the resolution used
  (``header.Set("Authorization", token)``); none when it used none.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

# distribution.ManifestMediaTypes(): what the scheduler's resolver puts in Accept.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
)
_INDEX_TYPES = frozenset(
    {"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json"}
)
# containerd's platforms.DefaultSpec() on the scheduler's own machine: a Linux amd64 one.
DEFAULT_PLATFORM = "linux/amd64"
MAX_MANIFEST_BYTES = 4 << 20
_MANIFEST_URL = re.compile(r"^(.*)://(.*)/v2/(.*)/manifests/(.*)")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ResolveError(Exception):
    """The image could not be resolved; the scheduler answers INVALID_ARGUMENT with the text."""


@dataclass(frozen=True)
class ResolvedImage:
    blob_urls: tuple[str, ...]
    peer_headers: dict[str, str]  # what every peer downloads the blobs with


@dataclass(frozen=True)
class _Reference:
    scheme: str
    registry: str
    repository: str

    def url(self, kind: str, reference: str) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repository}/{kind}/{reference}"


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((value for key, value in headers.items() if key.lower() == name.lower()), "")


def _parse_platform(platform: str) -> tuple[str, str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ResolveError(f'invalid platform format "{platform}", expected "os/arch" (e.g., "linux/amd64")')
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def resolve_image(
    session: requests.Session,
    manifest_url: str,
    header: Mapping[str, str],
    *,
    username: str = "",
    password: str = "",
    platform: str = "",
    timeout: float = 30.0,
) -> ResolvedImage:
    match = _MANIFEST_URL.match(manifest_url)
    if match is None:
        raise ResolveError("parse access url failed")
    scheme, registry, repository, reference = match.groups()
    ref = _Reference(scheme, registry, repository)
    wanted = _parse_platform(platform or DEFAULT_PLATFORM)
    headers = dict(header)
    token = _header(headers, "Authorization")
    if not token:
        token = _authorize(session, ref, username, password, timeout)
    auth = {"Authorization": token} if token else {}
    blobs: list[str] = []
    _resolve(session, ref, reference, {**headers, **auth}, wanted, timeout, blobs, depth=0)
    if not blobs:
        raise ResolveError(f"no matching manifest for platform {'/'.join(p for p in wanted if p)}")
    peer_headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return ResolvedImage(tuple(blobs), {**peer_headers, **auth})


def _authorize(
    session: requests.Session, ref: _Reference, username: str, password: str, timeout: float
) -> str:
    """The Authorization value the registry's challenge asks for, or "" when it asks for none."""
    try:
        ping = session.get(f"{ref.scheme}://{ref.registry}/v2/", timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise ResolveError(f"failed to authenticate with registry: {type(exc).__name__}") from None
    ping.close()
    challenge = ping.headers.get("WWW-Authenticate", "") if ping.status_code == 401 else ""
    scheme, _, rest = challenge.partition(" ")
    basic = (username, password) if username or password else None
    if scheme.lower() == "basic":
        if basic is None:
            return ""
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    if scheme.lower() != "bearer":
        return ""
    params = dict(_CHALLENGE_PARAM.findall(rest))
    realm = params.get("realm", "")
    if not realm:
        raise ResolveError("failed to authenticate with registry: a Bearer challenge without a realm")
    query = {"scope": f"repository:{ref.repository}:pull", "client_id": "docker"}
    if params.get("service"):
        query["service"] = params["service"]
    try:
        answer = session.get(realm, params=query, auth=basic, timeout=timeout)
    except requests.RequestException as exc:
        raise ResolveError(f"failed to fetch a token from {realm}: {type(exc).__name__}") from None
    if answer.status_code != 200:
        raise ResolveError(f"failed to fetch a token from {realm}: HTTP {answer.status_code}")
    try:
        body: Any = answer.json()
    except ValueError:
        body = None
    value = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ResolveError(f"the token service {realm} answered no token")
    return f"Bearer {value}"


def _resolve(
    session: requests.Session,
    ref: _Reference,
    reference: str,
    headers: dict[str, str],
    wanted: tuple[str, str, str],
    timeout: float,
    blobs: list[str],
    depth: int,
) -> None:
    if depth > 2:
        raise ResolveError("unknown manifest type: an index nested in an index")
    media_type, document = _fetch_manifest(session, ref.url("manifests", reference), headers, timeout)
    if media_type in _INDEX_TYPES or "manifests" in document:
        for child in document.get("manifests") or []:
            if isinstance(child, dict) and _matches(child.get("platform"), wanted):
                _resolve(session, ref, str(child.get("digest")), headers, wanted, timeout, blobs, depth + 1)
        return
    if "layers" not in document and "fsLayers" not in document:
        raise ResolveError("unknown manifest type")
    descriptors = [document.get("config"), *(document.get("layers") or [])]
    # Schema 1 lists a blobSum per layer instead.
    descriptors += [
        {"digest": layer.get("blobSum")}
        for layer in document.get("fsLayers") or []
        if isinstance(layer, dict)
    ]
    blobs.extend(
        ref.url("blobs", str(descriptor["digest"]))
        for descriptor in descriptors
        if isinstance(descriptor, dict) and descriptor.get("digest")
    )


def _fetch_manifest(
    session: requests.Session, url: str, headers: dict[str, str], timeout: float
) -> tuple[str, dict[str, Any]]:
    """The manifest's media type (from Content-Type, else its own ``mediaType``) and its JSON."""
    asked = {**headers, "Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
    try:
        response = session.get(url, headers=asked, timeout=timeout)
    except requests.RequestException as exc:
        raise ResolveError(f"failed to pull image manifest: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ResolveError(f"failed to pull image manifest: GET {url} answered HTTP {response.status_code}")
    if len(response.content) > MAX_MANIFEST_BYTES:
        raise ResolveError(f"failed to pull image manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document: Any = json.loads(response.content)
    except ValueError:
        raise ResolveError("failed to pull image manifest: not JSON") from None
    if not isinstance(document, dict):
        raise ResolveError("unknown manifest type")
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if media_type in ("", "application/json", "text/plain"):
        media_type = str(document.get("mediaType") or "")
    return media_type, document


def _matches(platform: Any, wanted: tuple[str, str, str]) -> bool:
    """containerd's ``platforms.Only``, for the cases that matter here: the OS and architecture
    equal, and the variant too when the wanted platform names one."""
    if not isinstance(platform, dict):
        return False
    os_name, arch, variant = wanted
    if platform.get("os") != os_name or platform.get("architecture") != arch:
        return False
    return not variant or platform.get("variant", "") == variant
