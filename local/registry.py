"""The real CNCF Distribution registry on 127.0.0.1 for ``make run`` and the tests, and the demo
image the local stack serves.

- :class:`RegistryServer` runs the Debian ``docker-registry`` (CNCF Distribution 2.8) on 127.0.0.1,
  optionally behind htpasswd Basic auth or token auth (a :class:`TokenAuthority`, such as the tests'
  ``testing.token_server.TokenServer``), or with its blobs in S3, and pushes OCI layouts
  (:mod:`local.oci_layout`) into it with ``skopeo``.
- :func:`make_demo_layout` / :func:`push_demo_image`: the demo image ``demo/app:v1`` that
  ``python -m local.stack`` offers a newcomer to preheat.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import requests

from local.oci_layout import LayerSpec, OciImage, OciIndex, make_oci_layout

log = logging.getLogger("local.registry")

TOKEN_CA_FILE = "token-ca.pem"  # noqa: S105 - a file name


class TokenAuthority(Protocol):
    """A Docker token service a registry can trust: its users, where clients get tokens, and the
    certificate its tokens are signed under."""

    @property
    def users(self) -> Mapping[str, str]: ...

    @property
    def running(self) -> bool: ...

    @property
    def realm(self) -> str: ...

    @property
    def service(self) -> str: ...

    @property
    def issuer(self) -> str: ...

    @property
    def certificate_pem(self) -> bytes: ...


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
    behind a running :class:`TokenAuthority` instead (its users are then the registry's); with neither
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
        token_auth: TokenAuthority | None = None,
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
