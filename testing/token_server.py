"""A Docker token service (the ``Bearer realm``) for registries behind token auth: a stub server that
mints the ES256 JWTs such a registry accepts: anonymous pulls of public repositories, Basic
credentials exchanged for a token otherwise."""

from __future__ import annotations

import base64
import datetime
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from local.oci_layout import canonical_json
from testing.stub_server import StubRequest, StubResponse, StubServer

log = logging.getLogger("testing.token_server")

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
        signing_input = f"{_b64url(canonical_json(header))}.{_b64url(canonical_json(claims))}"
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
