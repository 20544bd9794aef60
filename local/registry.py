"""Container registries on 127.0.0.1 for ``make run`` and the tests: OCI layouts generated in memory,
the real CNCF Distribution registry, and the demo image the local stack serves.

- :func:`make_oci_layout` / :func:`make_oci_index_layout` write OCI image layouts that ``skopeo`` can
  push (small, deterministic tars: the same arguments give the same digests).
- :class:`RegistryServer` runs the Debian ``docker-registry`` (CNCF Distribution 2.8) on 127.0.0.1,
  optionally behind htpasswd Basic auth or token auth, or with its blobs in S3, and pushes layouts
  into it with ``skopeo``.
- :class:`StubServer` is a threaded HTTP server on 127.0.0.1 answering what a handler scripts: for
  what a real registry will not do on demand (throttling, 5xx, slowness, redirect loops), and the
  benchmarks' stub registries.
- :class:`TokenServer` is a Docker token service (the ``Bearer realm``), a stub server that mints
  the ES256 JWTs such a registry accepts: anonymous pulls of public repositories, Basic credentials
  exchanged for a token otherwise.
- :func:`make_demo_layout` / :func:`push_demo_image`: the demo image ``demo/app:v1`` that
  ``python -m local.stack`` offers a newcomer to preheat.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from local.background import BackgroundServer

log = logging.getLogger("local.registry")

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
        manifest = _canonical(
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
    index = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
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
    config_bytes = _canonical(image_config)
    config_digest = _write_blob(path, config_bytes)
    manifest = _canonical(
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
    (path / "index.json").write_bytes(_canonical(index))


def _write_blob(path: Path, data: bytes) -> str:
    digest = digest_of(data)
    _blob_path(path, digest).write_bytes(data)
    return digest


def _blob_path(path: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return path / "blobs" / algorithm / encoded


def _size(path: Path, digest: str) -> int:
    return _blob_path(path, digest).stat().st_size


def _canonical(document: Mapping[str, Any]) -> bytes:
    # Sorted keys and no spaces: the same document always has the same bytes, hence the same digest.
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


# -- the real registry ---------------------------------------------------------------------------

REGISTRY_BINARY = "docker-registry"
SKOPEO_BINARY = "skopeo"
HTPASSWD_BINARY = "htpasswd"
REGISTRY_HOST = "127.0.0.1"


def missing_tools(*names: str) -> list[str]:
    """Which of the named executables are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((REGISTRY_HOST, 0))
        return int(probe.getsockname()[1])


def _registry_environment() -> dict[str, str]:
    """Ours, minus what would change the registry's behaviour behind the config file's back."""
    return {
        key: value
        for key, value in os.environ.items()
        # The registry reads REGISTRY_* as config overrides; AWS_CA_BUNDLE breaks its s3 driver.
        if not key.startswith("REGISTRY_") and key != "AWS_CA_BUNDLE"
    }


@dataclass(frozen=True)
class S3Storage:
    """An S3 bucket for the registry's blobs (a moto server will do): blob GETs then answer 307 to
    presigned storage URLs, as on registries backed by S3."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str = "registry"
    region: str = "us-east-1"
    # moto accepts any credentials; a real bucket passes its own.
    access_key: str = "test"
    secret_key: str = "test"  # noqa: S105


class RegistryServer:
    """The real Distribution registry (``docker-registry serve``) on 127.0.0.1.

    ``port=0`` picks a free port (read it from :attr:`port` once started). Blobs are kept on the
    filesystem under ``root``, or in ``s3`` when given. ``users`` maps user names to passwords for
    htpasswd Basic auth (bcrypt entries, as the registry requires); ``token_auth`` puts the registry
    behind a running :class:`TokenServer` instead (its users are then the registry's); with neither
    the registry is anonymous. ``schema1`` lets it accept pushes of Docker schema1 manifests
    (``push(..., fmt="v2s1")``), which Distribution 2.8 refuses by default. A ``root`` of None is a
    temporary directory removed by :meth:`stop`; a given one is kept, so its images outlive the
    process. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int = 0,
        users: Mapping[str, str] | None = None,
        s3: S3Storage | None = None,
        token_auth: TokenServer | None = None,
        schema1: bool = False,
        start_timeout: float = 20.0,
    ) -> None:
        if users and token_auth is not None:
            raise ValueError("a registry has htpasswd users or token auth, not both")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="registry-")) if root is None else root
        self.users = dict(users or {})
        self.s3 = s3
        self.token_auth = token_auth
        self.schema1 = schema1
        self.start_timeout = start_timeout
        self._requested_port = port
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of an image reference."""
        return f"{REGISTRY_HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The first configured user and password (of the token server, with token auth), if any."""
        users = self.token_auth.users if self.token_auth is not None else self.users
        return next(iter(users.items()), None)

    def basic_auth(self, user: str | None = None, password: str | None = None) -> str:
        """An ``Authorization`` value for ``user`` (default: the first configured user)."""
        if user is None:
            if self.credentials is None:
                raise ValueError("this registry has no users")
            user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()

    def start(self) -> Self:
        if self.running:
            return self
        missing = missing_tools(REGISTRY_BINARY, *([HTPASSWD_BINARY] if self.users else []))
        if missing:
            raise RuntimeError(f"cannot start a registry: {', '.join(missing)} not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd = self._write_htpasswd() if self.users else None
        if self.token_auth is not None:
            if not self.token_auth.running:
                raise RuntimeError("start the TokenServer before the registry that trusts it")
            (self.root / TOKEN_CA_FILE).write_bytes(self.token_auth.certificate_pem)
        last_error = ""
        # A free port can be taken between probing and binding; a few tries make that harmless. A port
        # the caller chose gets one try, checked first: the registry's own error only shows in its log.
        for _ in range(1 if self._requested_port else 3):
            self.port = self._requested_port or free_port()
            if self._requested_port:
                _check_bindable(self._requested_port)
            config = self.root / "config.yml"
            config.write_text(json.dumps(self._config(htpasswd), indent=2))  # JSON is YAML
            with (self.root / "registry.log").open("wb") as registry_log:
                self._process = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(config)],
                    stdout=registry_log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=_registry_environment(),
                )
            if self._wait_ready():
                log.info("registry listening on %s, data in %s", self.url, self.root)
                return self
            last_error = self._log_tail()
            self._terminate()
        raise RuntimeError(f"docker-registry did not start: {last_error}")

    def stop(self) -> None:
        """Stops the registry process (safe to call more than once); removes a temporary root."""
        self._terminate()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def image(self, reference: str) -> str:
        """``name:tag`` as ``127.0.0.1:PORT/name:tag``."""
        return f"{self.host}/{reference}"

    def push(
        self,
        layout: Path | OciImage | OciIndex,
        reference: str,
        *,
        fmt: Literal["oci", "v2s2", "v2s1"] = "oci",
        creds: tuple[str, str] | None = None,
        all_images: bool | None = None,
    ) -> str:
        """Copy the OCI layout to ``reference`` (``name:tag`` or ``127.0.0.1:PORT/name:tag``) and
        return the digest of the manifest the registry now holds.

        ``fmt="oci"`` keeps every digest (``--preserve-digests``); ``"v2s2"`` converts to a Docker
        schema2 manifest (a Docker manifest list for an index): the layers and config keep their
        digests, the manifests get new ones. ``"v2s1"`` pushes a signed Docker schema1 manifest
        (the registry must be started with ``schema1=True``): gzip layers keep their digests, and
        there is no config blob.
        ``creds`` default to the registry's first user. ``all_images`` (default: True for an
        :class:`OciIndex`) copies an index with every image it lists.
        """
        if missing_tools(SKOPEO_BINARY):
            raise RuntimeError("cannot push: skopeo is not installed")
        path = layout if isinstance(layout, Path) else layout.path
        if all_images is None:
            all_images = isinstance(layout, OciIndex)
        if not reference.startswith(f"{self.host}/"):
            reference = self.image(reference)
        creds = creds or self.credentials
        with tempfile.TemporaryDirectory(prefix="skopeo-") as scratch:
            digest_file = Path(scratch) / "digest"
            command = [SKOPEO_BINARY, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
            command += ["--digestfile", str(digest_file)]
            if fmt in ("v2s2", "v2s1"):
                command += ["--format", fmt]
            else:
                command += ["--format", "oci", "--preserve-digests"]
            if all_images:
                command += ["--all"]
            if creds:
                command += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
            else:
                command += ["--dest-no-creds"]
            command += [f"oci:{path}", f"docker://{reference}"]
            # skopeo stages blobs in TMPDIR: the scratch directory goes away with it.
            env = {**os.environ, "TMPDIR": scratch}
            env.pop("AWS_CA_BUNDLE", None)
            result = subprocess.run(command, capture_output=True, env=env, timeout=60, check=False)
            if result.returncode != 0:
                error = result.stderr.decode(errors="replace").strip()
                raise RuntimeError(f"skopeo copy to {reference} failed: {error}")
            return digest_file.read_text().strip()

    def _config(self, htpasswd: Path | None) -> dict[str, Any]:
        storage: dict[str, Any] = {
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        }
        if self.s3 is None:
            storage["filesystem"] = {"rootdirectory": str(self.root / "data")}
        else:
            # With regionendpoint set, Distribution 2.8 uses path-style URLs: what moto serves.
            storage["s3"] = {
                "accesskey": self.s3.access_key,
                "secretkey": self.s3.secret_key,
                "region": self.s3.region,
                "regionendpoint": self.s3.endpoint,
                "bucket": self.s3.bucket,
                "secure": self.s3.endpoint.startswith("https://"),
                "v4auth": True,
            }
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": storage,
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "preheat-tests", "path": str(htpasswd)}}
        if self.token_auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.root / TOKEN_CA_FILE),
                }
            }
        if self.schema1:
            config["compatibility"] = {"schema1": {"enabled": True}}
        return config

    def _write_htpasswd(self) -> Path:
        path = self.root / "htpasswd"
        path.write_text("")
        for user, password in self.users.items():
            # -i reads the password from stdin: it never shows in the process list.
            subprocess.run(
                [HTPASSWD_BINARY, "-B", "-i", str(path), user],
                input=password.encode(),
                capture_output=True,
                check=True,
                timeout=30,
            )
        return path

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                response = requests.get(f"{self.url}/v2/", timeout=1)
            except requests.RequestException:
                pass
            else:
                # 401 is a registry behind auth answering: up, too.
                if response.status_code in (200, 401):
                    return True
            time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _log_tail(self) -> str:
        try:
            return (self.root / "registry.log").read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"


def _check_bindable(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the registry (Go) binds: a port in TIME_WAIT from the last run is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((REGISTRY_HOST, port))
        except OSError as exc:
            raise RuntimeError(f"cannot start a registry on {REGISTRY_HOST}:{port}: {exc.strerror}") from exc


# -- a scripted stub server -----------------------------------------------------------------------


@dataclass(frozen=True)
class StubRequest:
    """A request the stub received. ``headers`` ignore case, as HTTP does."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    host: str  # 127.0.0.1:PORT of the stub that answered
    peer: str = ""  # the client's 127.0.0.1:PORT: one per connection, so tests can count connections

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class StubResponse:
    """What the stub answers. An iterable ``body`` is streamed without Content-Length."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def json(cls, document: Any, status: int = 200, **headers: str) -> StubResponse:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> StubResponse:
        """A Distribution error body: ``{"errors": [{"code": ..., "message": ...}]}``."""
        return cls.json({"errors": [{"code": code, "message": message}]}, status, **headers)

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> StubResponse:
        return cls(status, b"", {"Location": location})


Handler = Callable[[StubRequest], StubResponse]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops the SYNs of a client opening 16 connections at once, and
    # each dropped one costs a second before it is sent again.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a connection it no longer wants (a blob it did not read) is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class StubServer(BackgroundServer):
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``handler(request)``.

    Every request is kept in :attr:`requests`. A handler that raises answers 500 (and the error
    is kept in :attr:`errors`, so a test can assert there was none).
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda request: StubResponse(404))
        self.requests: list[StubRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        # A short poll interval: tests start and stop many of these.
        super().__init__(_QuietServer(("127.0.0.1", 0), self._handler_class()), "stub-server", 0.01)

    def requests_to(self, path_prefix: str) -> list[StubRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    @property
    def connections(self) -> int:
        """How many connections the requests so far came over."""
        with self._lock:
            return len({r.peer for r in self.requests})

    def _record(self, request: StubRequest) -> StubResponse:
        with self._lock:
            self.requests.append(request)
        try:
            return self.handler(request)
        except Exception as exc:  # a test's handler failing must show, not hang the client
            with self._lock:
                self.errors.append(exc)
            return StubResponse(500, f"stub handler failed: {exc!r}".encode())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; Nagle would hold the body for the client's
            # delayed ACK (40 ms a request).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                request = StubRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers=self.headers,
                    host=stub.host,
                    peer=f"{self.client_address[0]}:{self.client_address[1]}",
                )
                response = stub._record(request)
                if response.delay:
                    time.sleep(response.delay)
                try:
                    self._send(response)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send(self, response: StubResponse) -> None:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if isinstance(response.body, bytes):
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(response.body)
                    return
                # No length: the body ends when the connection does.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                for chunk in response.body:
                    self.wfile.write(chunk)

        return _Handler


# -- a token service for registries behind token auth --------------------------------------------

TOKEN_CA_FILE = "token-ca.pem"  # noqa: S105 - a file name
TokenField = Literal["token", "access_token", "both"]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered: the user it named (None: anonymous), for what, and
    how it went (401: wrong credentials)."""

    user: str | None
    service: str
    scopes: tuple[str, ...]
    status: int
    granted: tuple[tuple[str, tuple[str, ...]], ...]  # (repository, actions) the token carries


class TokenServer:
    """A Docker token service on 127.0.0.1: the ``realm`` a registry with token auth sends clients to.

    It mints JWTs the way Distribution 2.8 verifies them: ES256, signed by a key whose self-signed
    certificate is the registry's ``rootcertbundle`` and travels in the ``x5c`` header, with the
    registry's ``service`` as audience and ``issuer`` as issuer. Policy, as on Docker Hub:

    - Basic credentials of one of ``users``: every action asked for, on every repository; wrong
      credentials answer 401.
    - anonymous: ``pull`` on the repositories named in ``public`` (a name, or a prefix ending in
      ``/``), nothing elsewhere (the token is valid but grants no access: the registry then answers
      401 ``insufficient_scope``).

    ``answer`` picks the field of the answer that holds the token (``token``, ``access_token`` or
    both, as real services differ); ``lifetime`` is its ``expires_in``. Every request is kept in
    :attr:`requests`. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        public: Sequence[str] = (),
        service: str = "preheat-registry",
        issuer: str = "preheat-token-server",
        lifetime: int = 300,
        answer: TokenField = "token",
    ) -> None:
        self.users = dict(users or {})
        self.public = tuple(public)
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.answer: TokenField = answer
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: StubServer | None = None
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the token server is not started")
        return self._server.url

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def start(self) -> Self:
        if self._server is None:
            self._server = StubServer(self._answer)
            log.info("token server listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def mint(self, user: str | None, access: Sequence[tuple[str, Sequence[str]]]) -> str:
        """A signed JWT granting ``access`` ((repository, actions) pairs) to ``user``."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": "repository", "name": name, "actions": list(actions)} for name, actions in access
            ],
        }
        signing_input = f"{_b64url(_canonical(header))}.{_b64url(_canonical(claims))}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS wants the raw 64-byte r || s, not the DER sequence cryptography returns.
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _answer(self, request: StubRequest) -> StubResponse:
        if request.path != "/token":
            return StubResponse.error(404, "NOT_FOUND", "no such path")
        service = (request.query.get("service") or [""])[0]
        scopes = tuple(request.query.get("scope") or [])
        user: str | None = None
        authorization = request.header("Authorization")
        if authorization:
            user, valid = self._basic_user(authorization)
            if not valid:
                self._record(TokenRequest(user, service, scopes, 401, ()))
                return StubResponse.error(
                    401,
                    "UNAUTHORIZED",
                    "invalid username or password",
                    **{"WWW-Authenticate": f'Basic realm="{self.issuer}"'},
                )
        granted: list[tuple[str, tuple[str, ...]]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = tuple(action for action in actions.split(",") if action)
            if user is None:  # anonymous: pull, of public repositories only
                wanted = ("pull",) if "pull" in wanted and self._is_public(name) else ()
            if wanted:
                granted.append((name, wanted))
        self._record(TokenRequest(user, service, scopes, 200, tuple(granted)))
        token = self.mint(user, granted)
        answer: dict[str, Any] = {
            "expires_in": self.lifetime,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        if self.answer in ("token", "both"):
            answer["token"] = token
        if self.answer in ("access_token", "both"):
            answer["access_token"] = token
        return StubResponse.json(answer)

    def _basic_user(self, authorization: str) -> tuple[str | None, bool]:
        """The user a Basic header names, and whether its password is theirs."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        expected = self.users.get(user)
        valid = expected is not None and secrets.compare_digest(expected.encode(), password.encode())
        return user, valid

    def _is_public(self, name: str) -> bool:
        return any(name == item or (item.endswith("/") and name.startswith(item)) for item in self.public)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- the demo image ------------------------------------------------------------------------------

DEMO_REPOSITORY = "demo/app"
DEMO_TAG = "v1"
DEMO_REFERENCE = f"{DEMO_REPOSITORY}:{DEMO_TAG}"
DEMO_DATA_BYTES = 128 * 1024


def demo_layers() -> list[LayerSpec]:
    """Three small layers, the same bytes on every machine (so the same digests): a release file, a
    script, and a data file that does not compress, so the supernode has something real to download."""
    data = bytearray()
    block = b"preheat-demo"
    while len(data) < DEMO_DATA_BYTES:
        block = hashlib.sha256(block).digest()
        data += block
    return [
        {"etc/demo-release": b"NAME=preheat-demo\nVERSION=1\n"},
        {"app/hello.sh": b"#!/bin/sh\necho 'hello from the preheat demo image'\n"},
        {"app/data.bin": bytes(data[:DEMO_DATA_BYTES])},
    ]


def make_demo_layout(path: Path) -> OciImage:
    """The demo image as an OCI layout in ``path``: deterministic, so its digests are known in advance."""
    config = {"config": {"Cmd": ["/bin/sh", "/app/hello.sh"], "WorkingDir": "/app"}}
    return make_oci_layout(path, demo_layers(), config=config)


def push_demo_image(registry: RegistryServer) -> str:
    """Generate the demo image and push it to ``registry``; returns its reference (``HOST/demo/app:v1``).

    Pushing again is cheap and harmless: the content never changes and skopeo skips blobs the registry
    already holds, so a registry whose data outlives the stack simply gets the tag back if it was lost.
    """
    with tempfile.TemporaryDirectory(prefix="preheat-demo-") as scratch:
        registry.push(make_demo_layout(Path(scratch)), DEMO_REFERENCE)
    return registry.image(DEMO_REFERENCE)
