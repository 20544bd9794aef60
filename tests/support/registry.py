"""Registries for tests: OCI layouts built in memory, the real Distribution registry, and a stub server.

- :func:`make_oci_layout` / :func:`make_oci_index_layout` write OCI image layouts that ``skopeo``
  can push (small, deterministic tars: the same arguments give the same digests).
- :class:`RegistryServer` runs the Debian ``docker-registry`` (CNCF Distribution 2.8) on
  127.0.0.1, optionally behind htpasswd Basic auth, and pushes layouts into it with ``skopeo``.
- :class:`StubServer` is a threaded stdlib HTTP server whose answers a test scripts, for the
  behaviours a real registry will not show on demand (throttling, 5xx, redirects, slowness).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

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
    """Write an OCI layout holding one OCI index with an image per ``"os/arch"`` in ``platforms``.

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
        os_name, _, architecture = image.platform.partition("/")
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": _size(path, image.manifest_digest),
                "platform": {"architecture": architecture, "os": os_name},
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
    os_name, _, architecture = platform.partition("/")
    descriptors: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for number, spec in enumerate(layers):
        files = {f"layer-{number}.txt": spec} if isinstance(spec, bytes) else dict(spec)
        tar = make_layer_tar(files)
        diff_ids.append(digest_of(tar))
        blob = gzip.compress(tar, mtime=0) if compress else tar
        descriptors.append(
            {
                "mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER,
                "digest": _write_blob(path, blob),
                "size": len(blob),
            }
        )
    image_config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
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
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


# -- the real registry ---------------------------------------------------------------------------

REGISTRY_BINARY = "docker-registry"
SKOPEO_BINARY = "skopeo"
HTPASSWD_BINARY = "htpasswd"


def missing_tools(*names: str) -> list[str]:
    """Which of the named executables are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class S3Storage:
    """An S3 bucket for the registry's blobs (a moto server will do): blob GETs then answer 307 to
    presigned storage URLs, as on registries backed by S3."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str = "registry"
    region: str = "us-east-1"
    access_key: str = "test"
    secret_key: str = "test"


class MotoS3Server:
    """moto's S3 in a thread on 127.0.0.1 (moto does not check signatures: it shows where a URL
    points, not whether the signature would hold)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self, name: str = "registry") -> S3Storage:
        """Create the bucket (moto accepts an unsigned PUT) and describe it for a registry."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return S3Storage(self.endpoint, name)

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.stop()


class RegistryServer:
    """The real Distribution registry (``docker-registry serve``) on 127.0.0.1.

    Blobs are kept on the filesystem, or in ``s3`` when given. ``users`` maps user names to
    passwords for htpasswd Basic auth (bcrypt entries, as the registry requires); without it the
    registry is anonymous. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        users: Mapping[str, str] | None = None,
        s3: S3Storage | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="registry-")) if root is None else root
        self.users = dict(users or {})
        self.s3 = s3
        self.start_timeout = start_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The first configured user and password, if any."""
        return next(iter(self.users.items()), None)

    def basic_auth(self, user: str | None = None, password: str | None = None) -> str:
        """An ``Authorization`` value for ``user`` (default: the first configured user)."""
        if user is None:
            assert self.credentials is not None, "this registry has no users"
            user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()

    def start(self) -> Self:
        missing = missing_tools(REGISTRY_BINARY, *([HTPASSWD_BINARY] if self.users else []))
        if missing:
            raise RuntimeError(f"cannot start a registry: {', '.join(missing)} not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd = self._write_htpasswd() if self.users else None
        last_error = ""
        # A free port can be taken between probing and binding; a few tries make that harmless.
        for _ in range(3):
            self.port = free_port()
            config = self.root / "config.yml"
            config.write_text(json.dumps(self._config(htpasswd), indent=2))  # JSON is YAML
            log = (self.root / "registry.log").open("wb")
            env = {
                key: value
                for key, value in os.environ.items()
                # The registry reads REGISTRY_* as config overrides; AWS_CA_BUNDLE breaks its s3 driver.
                if not key.startswith("REGISTRY_") and key != "AWS_CA_BUNDLE"
            }
            self._process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            log.close()
            if self._wait_ready():
                return self
            last_error = self._log_tail()
            self._terminate()
        raise RuntimeError(f"docker-registry did not start: {last_error}")

    def stop(self) -> None:
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
        fmt: Literal["oci", "v2s2"] = "oci",
        creds: tuple[str, str] | None = None,
        all_images: bool | None = None,
    ) -> str:
        """Copy the OCI layout to ``reference`` (``name:tag`` or ``127.0.0.1:PORT/name:tag``) and
        return the digest of the manifest the registry now holds.

        ``fmt="oci"`` keeps every digest (``--preserve-digests``); ``"v2s2"`` converts to a Docker
        schema2 manifest: the layers and config keep their digests, the manifest gets a new one.
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
            if fmt == "v2s2":
                command += ["--format", "v2s2"]
            else:
                command += ["--format", "oci", "--preserve-digests"]
            if all_images:
                command += ["--all"]
            if creds:
                command += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
            else:
                command += ["--dest-no-creds"]
            command += [f"oci:{path}", f"docker://{reference}"]
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
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                    return True
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return True
            except OSError:
                pass
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


# -- a scripted stub server ----------------------------------------------------------------------


@dataclass(frozen=True)
class StubRequest:
    """A request the stub received. ``headers`` ignore case, as HTTP does."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    host: str  # 127.0.0.1:PORT of the stub that answered

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


class StubServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``handler(request)``.

    Every request is kept in :attr:`requests`. A handler that raises answers 500 (and the error
    is kept in :attr:`errors`, so a test can assert there was none).
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda request: StubResponse(404))
        self.requests: list[StubRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        # A short poll interval: shutdown waits for one, and tests start and stop many servers.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), name="stub-server", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def requests_to(self, path_prefix: str) -> list[StubRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
