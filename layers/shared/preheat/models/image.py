"""Image references and platforms: what a URL names in a registry, parsed by the distribution grammar."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from preheat.errors import InvalidRequest

MAX_REQUESTED_PLATFORMS = 64
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
_PLATFORM_PART_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
# What a platform means when it names no variant (as containerd normalises them).
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}


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
