"""Manifests and their media types: what an image manifest or an index names, parsed and checked.

An image index (or Docker manifest list) lists platform images; BuildKit's attestation entries are
skipped and counted. Text a registry wrote is quoted only through the ``scrub`` function given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from preheat.adapters.http import loads as _loads
from preheat.adapters.quoting import truncate
from preheat.errors import PermanentFailure
from preheat.models import Platform

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
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1})
_MANIFEST_TYPES = INDEX_TYPES | _IMAGE_TYPES | _SCHEMA1_TYPES
# Content types a registry may answer with for a manifest that names its type only in its body, or
# not at all (OCI made ``mediaType`` optional at first).
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
# Layers whose blob lives outside the registry (Windows base layers): fetched from their ``urls``.
_FOREIGN_LAYER_RE = re.compile(r"foreign|nondistributable")

MAX_LAYERS = 1000
# Descriptors a manifest may name before it is parsed at all: its layers and config, with room for
# those an index or annotations add (an index of 64 platforms and their attestations names 128).
# Counting ``"digest"`` (or schema1's ``"blobSum"``) in the bytes costs no allocation, where parsing
# a manifest of many thousand empty layers costs tens of MiB before its layer count can be checked.
MAX_DESCRIPTORS_LISTED = 2 * MAX_LAYERS
MAX_PLATFORMS = 64
MAX_PLATFORM_NAME_CHARS = 64
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int | None = None
    media_type: str | None = None
    # Where a foreign layer is downloaded from instead of the registry.
    url: str | None = None


@dataclass(frozen=True)
class IndexEntry:
    """A manifest an index lists, with every platform the index lists it under (two entries may
    name one manifest)."""

    descriptor: Descriptor
    platforms: tuple[Platform, ...]

    @property
    def may_be_index(self) -> bool:
        media_type = self.descriptor.media_type
        return media_type is None or media_type in INDEX_TYPES


@dataclass(frozen=True)
class Manifest:
    blobs: tuple[Descriptor, ...] = ()
    children: tuple[IndexEntry, ...] = ()
    attestations: int = 0  # index entries skipped as BuildKit attestations

    @property
    def is_index(self) -> bool:
        return bool(self.children)


@dataclass
class Selection:
    """Which platform images of an index one resolution takes, and what the index offered."""

    attestations: int = 0
    offered: set[Platform] = field(default_factory=set)
    taken: set[Platform] = field(default_factory=set)
    matched: set[Platform] = field(default_factory=set)  # requested platforms some entry matched

    def choose(self, entry: IndexEntry, requested: Sequence[Platform]) -> bool:
        """Whether to fetch the entry: a nested index always (its entries are chosen in turn),
        an image when nothing was requested or a requested platform matches one of its own."""
        if entry.descriptor.media_type in INDEX_TYPES:
            return True
        self.offered.update(entry.platforms)
        if not requested:
            return True
        hits = {wanted for wanted in requested for offered in entry.platforms if wanted.matches(offered)}
        self.matched |= hits
        return bool(hits)

    def take(self, entry: IndexEntry, requested: Sequence[Platform]) -> None:
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


def parse_manifest(body: bytes, content_type: str, what: str, scrub: Callable[[str], str]) -> Manifest:
    """The blobs of an image manifest, or the entries of an index; ``scrub`` makes the server's
    text fit to quote."""
    precheck(body, what)
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
            f"{what} has the unsupported media type {scrub(shown)!r}; supported: "
            f"{', '.join(sorted(_MANIFEST_TYPES))}"
        )
    if media_type in INDEX_TYPES:
        return _index_children(document, what, scrub)
    if media_type in _SCHEMA1_TYPES:
        return Manifest(blobs=_schema1_blobs(document, what))
    return Manifest(blobs=_image_blobs(document, what))


def precheck(body: bytes, what: str) -> None:
    """Refuse, before parsing, a manifest naming far more descriptors than any image may have."""
    for key in (b'"digest"', b'"blobSum"'):
        listed = body.count(key)
        if listed > MAX_DESCRIPTORS_LISTED:
            raise PermanentFailure(
                f"{what} names {listed} descriptors; at most {MAX_LAYERS} layers are supported"
            )


def _index_children(document: dict[str, Any], what: str, scrub: Callable[[str], str]) -> Manifest:
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise PermanentFailure(f"{what} is an index without a 'manifests' list")
    # By digest: two entries naming one manifest (same image, two platform spellings) fetch it once.
    children: dict[str, tuple[Descriptor, list[Platform]]] = {}
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
                f"{scrub(descriptor.media_type)!r}"
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
    return Manifest(
        children=tuple(IndexEntry(descriptor, tuple(listed)) for descriptor, listed in children.values()),
        attestations=attestations,
    )


def _platform_name(platform: Platform) -> str:
    """``os/architecture[/variant]``, cut short: the registry wrote it, and messages quote it."""
    return truncate(str(platform), MAX_PLATFORM_NAME_CHARS)


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


def _image_blobs(document: dict[str, Any], what: str) -> tuple[Descriptor, ...]:
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


def _schema1_blobs(document: dict[str, Any], what: str) -> tuple[Descriptor, ...]:
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
    return tuple(Descriptor(digest) for digest in digests)


def _descriptor(entry: dict[str, Any], what: str) -> Descriptor:
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
    return Descriptor(
        digest=digest,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        media_type=media_type,
        url=url,
    )


def verify_digest(body: bytes, expected: str, what: str) -> None:
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
