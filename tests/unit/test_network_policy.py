"""The outbound address policy (SSRF guard): which addresses are refused, that the check is on the
address actually connected to (DNS answers, rebinding, redirects, token realms), and the early
refusal at submit time."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from preheat import bootstrap
from preheat.adapters.http import ConnectionFailed, GuardedPoolManager, HttpClient
from preheat.adapters.registry import HttpRegistryClient
from preheat.adapters.registry_manifests import OCI_MANIFEST
from preheat.entrypoints.api import build_resolver, preheat_routes
from preheat.errors import InvalidRequest, PermanentFailure, TransientFailure
from preheat.models import Credentials, ImageReference, PreheatRequest, PreheatType, TaskStatus
from preheat.network import (
    ALLOW_HINT,
    AddressRefused,
    OutboundPolicy,
    check_request,
    classify,
    find_refusal,
    literal_address,
    parse_address,
)
from preheat.service import PreheatService
from preheat.settings import Settings
from preheat.worker import Worker
from tests.support.fakes import Clock, FakeQueue, FakeSupernodes, FakeTaskStore
from tests.support.lambda_context import LambdaContext
from tests.support.registry import StubRequest, StubResponse, StubServer, digest_of

LOOPBACK = ("127.0.0.0/8", "::1/128")
METADATA = "169.254.169.254"

# (address, what the refusal calls it); every range the policy refuses, in each form.
REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    ("169.254.169.254", "a link-local address (the instance metadata service)"),
    ("169.254.170.2", "a link-local address (the container credentials endpoint)"),
    ("169.254.1.1", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("febf:ffff::1", "a link-local address"),
    ("fd00:ec2::254", "(the instance metadata service)"),
    ("10.0.0.1", "a private address"),
    ("10.255.255.255", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.254", "a private address"),
    ("192.168.1.1", "a private address"),
    ("100.64.0.1", "a private address"),
    ("100.127.255.254", "a private address"),
    ("fc00::1", "a private address"),
    ("fdff:ffff::1", "a private address"),
    ("fec0::1", "a private address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("ff05::1:3", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("0.1.2.3", "a reserved address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.2.1", "a reserved address"),
    ("198.18.0.1", "a reserved address"),
    ("2001:db8::1", "a reserved address"),
    ("100::1", "a reserved address"),
    ("::7f00:1", "a reserved address"),  # IPv4-compatible (deprecated)
    # IPv4-mapped, NAT64 and 6to4 forms are judged by the IPv4 address they carry.
    ("::ffff:127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ("::ffff:169.254.169.254", "an IPv6 form of 169.254.169.254, a link-local address"),
    ("::ffff:10.1.2.3", "an IPv6 form of 10.1.2.3, a private address"),
    ("::ffff:192.168.0.1", "an IPv6 form of 192.168.0.1, a private address"),
    ("::ffff:100.64.0.1", "an IPv6 form of 100.64.0.1, a private address"),
    ("::ffff:224.0.0.1", "an IPv6 form of 224.0.0.1, a multicast address"),
    ("::ffff:0.0.0.0", "an IPv6 form of 0.0.0.0, an unspecified address"),
    ("64:ff9b::a9fe:a9fe", "an IPv6 form of 169.254.169.254, a link-local address"),
    ("2002:0a00:0001::1", "an IPv6 form of 10.0.0.1, a private address"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "52.94.236.248", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


def settings(**overrides: Any) -> Settings:
    # The redirect checks below are of the storage mode, where the worker follows blob redirects.
    overrides.setdefault("layer_urls", "storage")
    return Settings(insecure_registries=frozenset({"127.0.0.1"}), registry_timeout_seconds=1.0, **overrides)


# -- the ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), REFUSED)
def test_every_refused_range_is_refused_by_default(text: str, kind: str):
    reason = OutboundPolicy().refusal(parse_address(text))
    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize(("text", "kind"), REFUSED)
def test_every_refused_range_is_allowed_when_listed(text: str, kind: str):
    address = parse_address(text)
    exact = OutboundPolicy(allowed_networks=(ipaddress.ip_network(address),))
    assert exact.allows(address)
    # And through Settings, as PREHEAT_ALLOWED_NETWORKS gives it.
    env = Settings.from_env({"PREHEAT_ALLOWED_NETWORKS": f"{address}"})
    assert OutboundPolicy.of(env).allows(address)


def test_a_listed_network_allows_its_mapped_forms_and_nothing_else():
    policy = OutboundPolicy.of(Settings.from_env({"PREHEAT_ALLOWED_NETWORKS": "10.0.0.0/8, ::1/128"}))
    assert policy.allows(parse_address("10.9.8.7"))
    assert policy.allows(parse_address("::ffff:10.9.8.7"))
    assert policy.allows(parse_address("::1"))
    assert not policy.allows(parse_address("127.0.0.1"))
    assert not policy.allows(parse_address("172.16.0.1"))
    assert not policy.allows(parse_address(METADATA))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str):
    assert classify(parse_address(text)) is None
    assert OutboundPolicy().allows(parse_address(text))


def test_the_policy_is_on_by_default():
    assert Settings().allowed_networks == ()
    assert Settings.from_env({}).allowed_networks == ()
    assert not OutboundPolicy.of(Settings()).allows(parse_address("127.0.0.1"))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0251.0376.0251.0376", METADATA),
        ("localhost", "127.0.0.1"),
        ("registry.localhost", "127.0.0.1"),
        ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254"),
        ("10.0.0.1.", "10.0.0.1"),
        ("r.example.com", None),
        ("cafe.be", None),
    ],
)
def test_literal_addresses_are_read_without_dns(host: str, address: str | None):
    found = literal_address(host)
    assert (str(found) if found else None) == (str(ipaddress.ip_address(address)) if address else None)


# -- connect time: the address actually connected to ---------------------------------------------


class Resolver:
    """``socket.getaddrinfo`` with scripted answers for some names (one list per call, the last
    repeated); every other name goes to the real resolver."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: list[str] = []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, *args: Any) -> list[Any]:
        if host not in self.answers:
            return self._real(host, port, family, type, *args)
        self.calls.append(host)
        script = self.answers[host]
        addresses = script.pop(0) if len(script) > 1 else script[0]
        infos = []
        for text in addresses:
            is_v6 = ":" in text
            sockaddr = (text, int(port), 0, 0) if is_v6 else (text, int(port))
            family_of = socket.AF_INET6 if is_v6 else socket.AF_INET
            infos.append((family_of, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos


class Connects:
    """Every address a socket of this process connected to (or tried to)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.addresses: list[str] = []
        real = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> None:
            self.addresses.append(str(address[0]))
            real(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    return Resolver(monkeypatch)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Connects:
    return Connects(monkeypatch)


@pytest.fixture
def server() -> Iterator[StubServer]:
    with StubServer(lambda request: StubResponse(200, b"content")) as stub:
        yield stub
        assert not stub.errors


def port_of(stub: StubServer) -> int:
    return int(stub.host.rsplit(":", 1)[1])


def test_a_name_resolving_to_the_metadata_address_is_refused_at_connect_time(
    resolver: Resolver, connects: Connects
):
    resolver.answers["files.example.com"] = [[METADATA]]
    backoffs: list[float] = []
    client = HttpRegistryClient(settings(allowed_networks=LOOPBACK), sleep=backoffs.append)

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_file("http://files.example.com/latest/meta-data/iam", Credentials())

    message = str(caught.value)
    assert "files.example.com" in message
    assert f"resolves to {METADATA}, a link-local address (the instance metadata service)" in message
    assert ALLOW_HINT in message
    assert isinstance(caught.value, AddressRefused)
    assert METADATA not in connects.addresses  # nothing was connected to, not even attempted
    # Refused, not retried: one lookup, no backoff.
    assert resolver.calls == ["files.example.com"]
    assert backoffs == []


def test_an_image_on_a_registry_resolving_to_a_private_address_is_refused(resolver: Resolver):
    resolver.answers["registry.example.com"] = [["10.0.12.7", "fd12:3456::7"]]
    client = HttpRegistryClient(settings())

    with pytest.raises(PermanentFailure, match=r"manifest for registry\.example\.com/app:v1") as caught:
        client.resolve_image(ImageReference.parse("registry.example.com/app:v1"), Credentials())

    assert "resolves to 10.0.12.7, a private address (and 1 more refused address)" in str(caught.value)


def test_only_the_allowed_addresses_of_a_name_are_connected_to(
    resolver: Resolver, connects: Connects, server: StubServer
):
    resolver.answers["mixed.example.com"] = [[METADATA, "127.0.0.1"]]
    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))

    blob = client.resolve_file(f"http://mixed.example.com:{port_of(server)}/file.bin", Credentials())

    assert blob.url == f"http://mixed.example.com:{port_of(server)}/file.bin"
    assert len(server.requests) == 1
    assert connects.addresses == ["127.0.0.1"]


def test_dns_rebinding_between_connections_is_refused(
    resolver: Resolver, connects: Connects, server: StubServer
):
    """The first answer is allowed (127.0.0.1 stands for a public address here), the next one is
    the metadata address: the redirect hop's new connection must be refused, not trusted because
    the name was fine a moment ago."""
    resolver.answers["rebind.example.com"] = [["127.0.0.1"], [METADATA]]
    port = port_of(server)
    server.handler = lambda request: StubResponse(
        302, b"", {"Location": f"http://rebind.example.com:{port}/next", "Connection": "close"}
    )
    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))

    with pytest.raises(PermanentFailure, match=f"rebind.example.com: it resolves to {METADATA}"):
        client.resolve_file(f"http://rebind.example.com:{port}/first", Credentials())

    assert [request.path for request in server.requests] == ["/first"]
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]
    assert connects.addresses == ["127.0.0.1"]


def test_the_check_happens_per_connection_not_per_lookup(resolver: Resolver, server: StubServer):
    """One lookup answering an allowed address, the connection made to exactly that address: the
    check and the connection use the same answer (no second lookup to race)."""
    resolver.answers["once.example.com"] = [["127.0.0.1"], [METADATA]]
    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))

    client.resolve_file(f"http://once.example.com:{port_of(server)}/file", Credentials())

    assert resolver.calls == ["once.example.com"]


def test_the_peer_is_checked_once_connected(monkeypatch: pytest.MonkeyPatch, server: StubServer):
    """Whatever the lookup said, the address the kernel reports for the connection decides."""
    real = socket.socket.getpeername

    def peer(sock: socket.socket) -> Any:
        address = real(sock)
        return (METADATA, address[1]) if sock.family == socket.AF_INET else address

    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))
    monkeypatch.setattr(socket.socket, "getpeername", peer)

    with pytest.raises(PermanentFailure, match=f"is connected to {METADATA}, a link-local address"):
        client.resolve_file(f"http://localhost:{port_of(server)}/file", Credentials())
    assert server.requests == []  # refused before a byte was sent


def test_proxies_from_the_environment_are_not_used(monkeypatch: pytest.MonkeyPatch, server: StubServer):
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = HttpRegistryClient(settings(allowed_networks=LOOPBACK))

    client.resolve_file(f"{server.url}/file", Credentials())

    assert len(server.requests) == 1  # straight to the server, past the (dead) proxy


def test_the_guarded_pool_guards_a_plain_client():
    client = HttpClient(GuardedPoolManager(OutboundPolicy()))
    for url in (f"http://{METADATA}/latest/meta-data/", "https://[::1]:9/", "http://localhost:9/"):
        with pytest.raises(AddressRefused, match="refused to connect to"):
            client.get(url, timeout=1)
    with pytest.raises(AddressRefused, match="only http and https"):
        client.get("ftp://example.com/file", timeout=1)


def test_a_wrapped_refusal_is_found():
    refusal = AddressRefused("refused to connect to x: a private address")
    wrapped = ConnectionFailed("max retries")
    wrapped.__cause__ = refusal
    assert find_refusal(wrapped) is refusal
    assert find_refusal(ConnectionFailed("other")) is None


class TlsServer:
    """An HTTPS server on 127.0.0.1 whose certificate names ``tls.example.com`` only."""

    NAME = "tls.example.com"

    def __init__(self, directory: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.NAME)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(self.NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file = directory / "key.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    yield server
    server.close()


def test_https_verifies_the_name_while_connecting_to_the_checked_address(resolver: Resolver, tls: TlsServer):
    """TLS still checks the certificate against the name asked for (SNI and hostname), though the
    connection is made to the address the policy let through."""
    resolver.answers[TlsServer.NAME] = [["127.0.0.1"]]
    resolver.answers["other.example.com"] = [["127.0.0.1"]]
    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)), attempts=1)

    blob = client.resolve_file(f"https://{TlsServer.NAME}:{tls.port}/file.bin", Credentials())
    assert blob.url == f"https://{TlsServer.NAME}:{tls.port}/file.bin"
    assert tls.hits == ["/file.bin"]

    # The same address under a name the certificate does not carry: refused by TLS.
    with pytest.raises(TransientFailure, match="connection failed"):
        client.resolve_file(f"https://other.example.com:{tls.port}/file.bin", Credentials())
    assert tls.hits == ["/file.bin"]
    # And under a name resolving to a refused address: refused by the policy before any handshake.
    resolver.answers[TlsServer.NAME] = [[METADATA]]
    fresh = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)), attempts=1)
    with pytest.raises(PermanentFailure, match=f"resolves to {METADATA}"):
        fresh.resolve_file(f"https://{TlsServer.NAME}:{tls.port}/file.bin", Credentials())


# -- redirects and token realms ------------------------------------------------------------------


class AliasServer:
    """An HTTP server on 127.0.0.2 (all of 127/8 is loopback on Linux): reachable, yet outside a
    policy that allows 127.0.0.1/32 only."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self._server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        except OSError as exc:
            pytest.fail(f"cannot listen on 127.0.0.2: {exc}")
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.2:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def alias() -> Iterator[AliasServer]:
    server = AliasServer()
    yield server
    server.close()


def test_a_redirect_to_a_refused_loopback_address_is_refused(server: StubServer, alias: AliasServer):
    server.handler = lambda request: StubResponse.redirect(f"{alias.url}/stolen")
    only_one = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))

    with pytest.raises(PermanentFailure) as caught:
        only_one.resolve_file(f"{server.url}/file.bin", Credentials({"Authorization": "Bearer s3cret-value"}))

    message = str(caught.value)
    assert f"could not fetch the file {server.url}/file.bin" in message
    assert "refused to connect to 127.0.0.2: a loopback address" in message
    assert "s3cret" not in message
    assert alias.hits == []
    # The control: with all of loopback allowed, the same redirect reaches the server.
    everything = HttpRegistryClient(settings(allowed_networks=LOOPBACK))
    blob = everything.resolve_file(f"{server.url}/file.bin", Credentials())
    assert blob.url == f"{alias.url}/stolen"
    assert alias.hits == ["/stolen"]


@pytest.mark.parametrize(
    "target",
    [
        f"http://{METADATA}/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/",
    ],
)
def test_a_blob_redirect_to_the_metadata_service_is_refused(
    server: StubServer, connects: Connects, target: str
):
    config = b'{"architecture":"amd64","os":"linux"}'
    manifest = (
        b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"digest":"%s","size":%d},"layers":[]}'
        % (OCI_MANIFEST.encode(), digest_of(config).encode(), len(config))
    )

    def answer(request: StubRequest) -> StubResponse:
        if "/manifests/" in request.path:
            return StubResponse(200, manifest, {"Content-Type": OCI_MANIFEST})
        return StubResponse.redirect(target)

    server.handler = answer
    client = HttpRegistryClient(settings(allowed_networks=LOOPBACK))

    with pytest.raises(
        PermanentFailure, match=r"could not fetch the blob sha256:\w+ of .*: refused to connect"
    ):
        client.resolve_image(ImageReference.parse(f"{server.host}/app:v1"), Credentials())
    assert set(connects.addresses) == {"127.0.0.1"}


def test_a_redirect_to_ftp_is_refused(server: StubServer):
    server.handler = lambda request: StubResponse.redirect("ftp://files.example.com/file.bin")
    client = HttpRegistryClient(settings(allowed_networks=LOOPBACK))

    with pytest.raises(PermanentFailure, match="redirects to a URL that is not http"):
        client.resolve_file(f"{server.url}/file.bin", Credentials())


def test_a_token_realm_on_a_refused_address_is_refused(server: StubServer, alias: AliasServer):
    challenge = f'Bearer realm="{alias.url}/token",service="registry",scope="repository:app:pull"'
    server.handler = lambda request: StubResponse.error(
        401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": challenge}
    )
    client = HttpRegistryClient(settings(allowed_networks=("127.0.0.1/32",)))

    with pytest.raises(PermanentFailure) as caught:
        client.resolve_image(ImageReference.parse(f"{server.host}/app:v1"), Credentials())

    assert "could not fetch the token for repository app" in str(caught.value)
    assert "refused to connect to 127.0.0.2: a loopback address" in str(caught.value)
    assert alias.hits == []


# -- the worker: scheme, allowlist, literal addresses (no DNS needed) ----------------------------


def test_a_non_http_file_url_is_refused_by_the_client():
    client = HttpRegistryClient(settings())
    for url in ("ftp://files.example.com/file.bin", "file:///etc/passwd", "gopher://h.example.com/"):
        with pytest.raises(PermanentFailure, match="only http and https"):
            client.resolve_file(url, Credentials())


def test_a_literal_refused_address_is_refused_by_the_client_before_connecting(connects: Connects):
    client = HttpRegistryClient(settings())
    with pytest.raises(PermanentFailure, match=f"{METADATA} is a link-local address"):
        client.resolve_file(f"http://{METADATA}/latest/meta-data/", Credentials())
    assert connects.addresses == []


def test_the_allowlist_in_the_client(resolver: Resolver, server: StubServer):
    resolver.answers["r.example.com"] = [["127.0.0.1"]]
    client = HttpRegistryClient(settings(allowed_networks=LOOPBACK, allowed_registries=("*.example.com",)))

    # On the list (the port is ignored): fetched.
    client.resolve_file(f"http://r.example.com:{port_of(server)}/file.bin", Credentials())
    assert len(server.requests) == 1
    # Off the list: refused before any lookup.
    for url in (
        "http://example.org/file.bin",
        "http://example.com/file.bin",
        "http://r.example.com.evil.io/f",
    ):
        with pytest.raises(
            PermanentFailure, match=r"is not in PREHEAT_ALLOWED_REGISTRIES \(\*\.example\.com\)"
        ):
            client.resolve_file(url, Credentials())
    with pytest.raises(PermanentFailure, match=r"host example\.org is not in PREHEAT_ALLOWED_REGISTRIES"):
        client.resolve_image(ImageReference.parse("example.org/app:v1"), Credentials())
    assert resolver.calls == ["r.example.com"]


def test_the_worker_ends_a_task_on_a_refused_address_fail(resolver: Resolver):
    """A name the submit check cannot judge is refused where the connection is made."""
    resolver.answers["metadata.example.com"] = [[METADATA]]
    config = settings(task_timeout_seconds=600, check_window_seconds=0, allowed_registries=("*.example.com",))
    store, queue, clock = FakeTaskStore(), FakeQueue(), Clock()
    service = PreheatService(store, queue, config, clock=clock)
    worker = Worker(store, queue, HttpRegistryClient(config), FakeSupernodes(), config, clock=clock)

    task = service.submit(
        PreheatRequest.parse({"type": "file", "url": "http://metadata.example.com/latest/meta-data/"})
    )
    for message in queue.take():
        worker.handle(message)

    finished = store.tasks[task.task_id]
    assert finished.status is TaskStatus.FAIL
    assert f"resolves to {METADATA}, a link-local address" in (finished.message or "")


# -- submit time ---------------------------------------------------------------------------------


def submit(config: Settings, body: dict[str, Any]) -> tuple[FakeTaskStore, FakeQueue, Callable[[], Any]]:
    store, queue = FakeTaskStore(), FakeQueue()
    service = PreheatService(store, queue, config)
    return store, queue, lambda: service.submit(PreheatRequest.parse(body))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "image", "url": "10.0.0.5:5000/app:v1"}, "10.0.0.5 is a private address"),
        ({"type": "image", "url": "127.0.0.1:5001/demo/app:v1"}, "127.0.0.1 is a loopback address"),
        ({"type": "image", "url": "localhost:5000/app:v1"}, "localhost (127.0.0.1) is a loopback address"),
        ({"type": "image", "url": "[fd00:ec2::254]/app:v1"}, "fd00:ec2::254 is a private address"),
        ({"type": "image", "url": "http://192.168.1.10/v2/app/manifests/v1"}, "a private address"),
        ({"type": "image", "url": "100.64.1.1/app:v1"}, "100.64.1.1 is a private address"),
        (
            {"type": "file", "url": f"http://{METADATA}/latest/meta-data/"},
            f"{METADATA} is a link-local address (the instance metadata service)",
        ),
        ({"type": "file", "url": "http://2852039166/latest/"}, f"2852039166 ({METADATA}) is a link-local"),
        ({"type": "file", "url": "http://[::ffff:a9fe:a9fe]/latest/"}, "an IPv6 form of 169.254.169.254"),
        ({"type": "file", "url": "https://[fe80::1]/f"}, "fe80::1 is a link-local address"),
        ({"type": "file", "url": "http://224.0.0.1/f"}, "224.0.0.1 is a multicast address"),
        ({"type": "file", "url": "http://0.0.0.0:8080/f"}, "0.0.0.0 is an unspecified address"),
    ],
)
def test_submit_refuses_literal_refused_addresses_with_a_clear_400(body: dict[str, Any], expected: str):
    store, queue, call = submit(Settings(), body)

    with pytest.raises(InvalidRequest) as caught:
        call()

    assert str(caught.value).startswith("'url' is refused: ")
    assert expected in str(caught.value)
    assert str(caught.value).endswith(ALLOW_HINT)
    assert store.tasks == {}
    assert queue.sent == []


def test_submit_accepts_literal_addresses_in_allowed_networks():
    config = Settings(allowed_networks=("10.0.0.0/8", "127.0.0.0/8", "::1/128"))
    for url in (
        "10.0.0.5:5000/app:v1",
        "127.0.0.1:5001/demo/app:v1",
        "localhost:5000/app:v1",
        "[::1]:5000/a:b",
    ):
        store, _, call = submit(config, {"type": "image", "url": url})
        call()
        assert len(store.tasks) == 1


def test_submit_leaves_names_to_the_worker():
    store, _, call = submit(Settings(), {"type": "file", "url": "https://metadata.example.com/f"})
    call()
    assert len(store.tasks) == 1


def test_check_request_refuses_non_http_file_urls():
    # PreheatRequest.parse refuses them too; the policy refuses them whoever built the request.
    request = PreheatRequest(type=PreheatType.FILE, url="ftp://h.io/f")
    with pytest.raises(InvalidRequest, match=r"'url' is refused: ftp:// is not fetched: only http and https"):
        check_request(request, Settings())
    with pytest.raises(InvalidRequest, match="must be an absolute http:// or https:// URL"):
        PreheatRequest.parse({"type": "file", "url": "ftp://h.io/f"})


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("r.example.com/app:v1", True),
        ("r.example.com:5000/app:v1", True),
        ("a.b.example.com/app:v1", True),
        ("https://r.example.com/v2/app/manifests/v1", True),
        ("R.Example.COM/app:v1", True),
        ("example.org/app:v1", False),
        ("example.com/app:v1", False),
        ("r.example.com.evil.io/app:v1", False),
        ("nginx:latest", False),  # Docker Hub is not on this list
    ],
)
def test_submit_applies_the_registry_allowlist(url: str, allowed: bool):
    config = Settings(allowed_registries=("*.example.com",))
    store, _, call = submit(config, {"type": "image", "url": url})
    if allowed:
        call()
        assert len(store.tasks) == 1
    else:
        with pytest.raises(
            InvalidRequest, match=r"is not in PREHEAT_ALLOWED_REGISTRIES \(\*\.example\.com\)"
        ):
            call()
        assert store.tasks == {}


def test_the_allowlist_applies_to_file_hosts_and_knows_docker_hub_by_its_aliases():
    config = Settings.from_env({"PREHEAT_ALLOWED_REGISTRIES": "docker.io, Files.Example.COM"})
    for body in (
        {"type": "image", "url": "nginx:latest"},
        {"type": "image", "url": "docker.io/library/nginx:1"},
        {"type": "file", "url": "https://files.example.com/a.bin"},
    ):
        store, _, call = submit(config, body)
        call()
        assert len(store.tasks) == 1
    store, _, call = submit(config, {"type": "file", "url": "https://other.example.com/a.bin"})
    with pytest.raises(InvalidRequest, match=r"other\.example\.com is not in PREHEAT_ALLOWED_REGISTRIES"):
        call()


def test_the_api_answers_a_refused_url_with_code_400(monkeypatch: pytest.MonkeyPatch):
    store, queue = FakeTaskStore(), FakeQueue()
    service = PreheatService(store, queue, Settings())
    monkeypatch.setattr(bootstrap, "preheat_service", lambda: service)
    event = {
        "resource": "/api/preheat",
        "path": "/api/preheat",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "requestContext": {"resourcePath": "/api/preheat", "httpMethod": "POST", "stage": "Prod"},
        "body": json.dumps({"type": "file", "url": f"http://{METADATA}/latest/meta-data/"}),
        "isBase64Encoded": False,
    }

    answer = build_resolver(preheat_routes()).resolve(event, LambdaContext())

    assert json.loads(answer["body"]) == {
        "code": 400,
        "msg": f"'url' is refused: {METADATA} is a link-local address (the instance metadata service); "
        f"{ALLOW_HINT}",
    }
    assert store.tasks == {}
