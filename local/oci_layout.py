"""OCI image layouts generated in memory, which ``skopeo`` can push: small, deterministic tars (the
same arguments give the same digests). The local stack's demo image is one; the tests write more.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"

LayerSpec = bytes | Mapping[str, bytes]
"""A layer: the contents of its one file (``layer-<n>.txt``), or file names mapped to contents."""


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# -- OCI layouts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciImage:
    """An image written into an OCI layout: what a registry should answer once it is pushed."""

    path: Path
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    platform: str = "linux/amd64"

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config first, then the layers, each once: what resolving the image must return."""
        return tuple(dict.fromkeys((self.config_digest, *self.layer_digests)))

    def blob(self, digest: str) -> bytes:
        return _blob_path(self.path, digest).read_bytes()


@dataclass(frozen=True)
class OciIndex:
    """A multi-platform image (an OCI index) written into an OCI layout."""

    path: Path
    index_digest: str
    images: tuple[OciImage, ...]
    attestation_digest: str | None = None
    attestation_blob_digests: tuple[str, ...] = ()

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Every platform image's blobs, each once (attestations excluded)."""
        return tuple(dict.fromkeys(d for image in self.images for d in image.blob_digests))


def make_oci_layout(
    path: Path,
    layers: Sequence[LayerSpec],
    *,
    config: Mapping[str, Any] | None = None,
    compress: bool = True,
    platform: str = "linux/amd64",
) -> OciImage:
    """Write a one-image OCI layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``).

    Each layer is a small valid tar (gzip-compressed unless ``compress`` is False). ``config`` is
    merged over a minimal image config whose ``rootfs.diff_ids`` match the layers. Pushed with
    ``fmt="oci"`` every digest is kept; ``fmt="v2s2"`` keeps the config's and gzip layers' digests
    but compresses plain layers (schema2 has no plain layer type), which gives them new digests.
    """
    _init_layout(path)
    image = _write_image(path, layers, config=config, compress=compress, platform=platform)
    _write_index_json(path, OCI_MANIFEST, image.manifest_digest, _size(path, image.manifest_digest))
    return image


def make_oci_index_layout(
    path: Path,
    platforms: Mapping[str, Sequence[LayerSpec]],
    *,
    attestation: bool = False,
) -> OciIndex:
    """Write an OCI layout holding one OCI index with an image per ``"os/arch[/variant]"`` in
    ``platforms``.

    With ``attestation``, the index also lists a BuildKit-style attestation manifest (platform
    ``unknown/unknown``, annotation ``vnd.docker.reference.type: attestation-manifest``) for the
    first image: a client must skip it. Push with ``RegistryServer.push(..., all_images=True)``.
    """
    _init_layout(path)
    images = tuple(
        _write_image(path, layers, config=None, compress=True, platform=platform)
        for platform, layers in platforms.items()
    )
    entries: list[dict[str, Any]] = []
    for image in images:
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": _size(path, image.manifest_digest),
                "platform": _platform_fields(image.platform),
            }
        )
    attestation_digest = None
    attestation_blobs: tuple[str, ...] = ()
    if attestation and images:
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": []}).encode()
        statement_digest = _write_blob(path, statement)
        config_digest = _write_blob(path, b"{}")
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": 2},
                "layers": [
                    {
                        "mediaType": IN_TOTO,
                        "digest": statement_digest,
                        "size": len(statement),
                        "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                    }
                ],
            }
        )
        attestation_digest = _write_blob(path, manifest)
        attestation_blobs = (config_digest, statement_digest)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": attestation_digest,
                "size": len(manifest),
                "annotations": {
                    "vnd.docker.reference.digest": images[0].manifest_digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"architecture": "unknown", "os": "unknown"},
            }
        )
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    index_digest = _write_blob(path, index)
    _write_index_json(path, OCI_INDEX, index_digest, len(index))
    return OciIndex(path, index_digest, images, attestation_digest, attestation_blobs)


def make_layer_tar(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar (fixed mtime, owner and mode) holding ``files``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _write_image(
    path: Path,
    layers: Sequence[LayerSpec],
    *,
    config: Mapping[str, Any] | None,
    compress: bool,
    platform: str,
) -> OciImage:
    descriptors: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for number, spec in enumerate(layers):
        files = {f"layer-{number}.txt": spec} if isinstance(spec, bytes) else dict(spec)
        tar = make_layer_tar(files)
        diff_ids.append(digest_of(tar))
        # mtime=0: gzip otherwise stamps the current time into the header, and the digest with it.
        blob = gzip.compress(tar, mtime=0) if compress else tar
        descriptors.append(
            {
                "mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER,
                "digest": _write_blob(path, blob),
                "size": len(blob),
            }
        )
    image_config: dict[str, Any] = {
        **_platform_fields(platform),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }
    image_config.update(config or {})
    config_bytes = canonical_json(image_config)
    config_digest = _write_blob(path, config_bytes)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": descriptors,
        }
    )
    manifest_digest = _write_blob(path, manifest)
    return OciImage(
        path=path,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=tuple(d["digest"] for d in descriptors),
        platform=platform,
    )


def _platform_fields(platform: str) -> dict[str, str]:
    """``"linux/arm64/v8"`` as an index entry's (and an image config's) platform fields."""
    parts = platform.split("/")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"platform {platform!r} is not 'os/architecture[/variant]'")
    fields = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        fields["variant"] = parts[2]
    return fields


def _init_layout(path: Path) -> None:
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def _write_index_json(path: Path, media_type: str, digest: str, size: int) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (path / "index.json").write_bytes(canonical_json(index))


def _write_blob(path: Path, data: bytes) -> str:
    digest = digest_of(data)
    _blob_path(path, digest).write_bytes(data)
    return digest


def _blob_path(path: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return path / "blobs" / algorithm / encoded


def _size(path: Path, digest: str) -> int:
    return _blob_path(path, digest).stat().st_size


def canonical_json(document: Mapping[str, Any]) -> bytes:
    # Sorted keys and no spaces: the same document always has the same bytes, hence the same digest.
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
