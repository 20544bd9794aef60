"""Where outbound requests may go: the guard against server-side request forgery (SSRF).

A caller names a registry or a file URL, and the registry names token realms and storage URLs in
turn; any of them may point into the network the service runs in (the instance metadata service
at 169.254.169.254 or fd00:ec2::254, a VPC endpoint, localhost). So every request the registry
client makes goes through ``preheat.adapters.http.GuardedPoolManager``, whose connections:

- resolve the host themselves (``socket.getaddrinfo``), drop every address the policy refuses, and
  connect only to the others, by address: there is no second resolution between the check and the
  connection for a rebinding DNS server to answer differently;
- check the peer the kernel reports (``getpeername``) once connected, before a byte is sent;
- run for every new connection: each redirect hop, token realm and pooled connection is checked
  anew, and a connection kept in the pool is to an address that was allowed when it was made.

Refused by default (unless inside one of ``Settings.allowed_networks``): loopback, link-local,
private (RFC 1918, carrier-grade NAT, unique local), multicast, reserved and unspecified addresses,
and the IPv6 forms that embed such an IPv4 address (IPv4-mapped, NAT64, 6to4). Only http and
https are spoken. ``Settings.allowed_registries`` (host globs) narrows the servers a caller may
name; the hops a registry itself chooses (token realm, storage redirects) are checked by address
only, since registries spread them over hosts of their own (auth.docker.io, S3, CDNs).

Proxies are not used: one would connect on our behalf, past the check (Lambda has none), so the
pool manager ignores ``HTTP(S)_PROXY``. The supernode drivers are not guarded: operators configure the
supernodes, which are usually private. Every URL handed to a supernode is checked here all the same
(:meth:`OutboundPolicy.check_handover`: its scheme, the allowlist, then every address its host
resolves to), so that a caller cannot use the supernode to reach what the worker may not. The
supernode then downloads it, and follows the registry's redirects, with its own resolver: this
guard covers what this service fetches and hands over, not where a supernode's redirects lead.

What can be known without DNS (scheme, a literal address, ``localhost``, the allowlist) is also
checked when a request is submitted (:func:`check_request`), so that it is refused with a 400
rather than accepted and failed later.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _TYPE_DEFAULT

from preheat.errors import InvalidRequest, PermanentFailure, TransientFailure
from preheat.models import DOCKER_HUB_ALIASES, DOCKER_HUB_REGISTRY, PreheatRequest
from preheat.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# ``socket.getaddrinfo``'s shape: (host, port, family, type) -> [(family, type, proto, name, sockaddr)].
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
ALLOW_HINT = "allow it with PREHEAT_ALLOWED_NETWORKS"
MAX_GLOBS_QUOTED = 10

LOOPBACK = "a loopback address"
LINK_LOCAL = "a link-local address"
PRIVATE = "a private address"
MULTICAST = "a multicast address"
RESERVED = "a reserved address"
UNSPECIFIED = "an unspecified address"

# What each refused range is, most specific first (the first match names the address).
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), kind)
    for network, kind in (
        # IPv4
        ("0.0.0.0/32", UNSPECIFIED),
        ("0.0.0.0/8", RESERVED),  # "this network"
        ("10.0.0.0/8", PRIVATE),
        ("100.64.0.0/10", PRIVATE),  # carrier-grade NAT (shared address space)
        ("127.0.0.0/8", LOOPBACK),
        ("169.254.0.0/16", LINK_LOCAL),  # instance metadata, ECS credentials, Amazon DNS
        ("172.16.0.0/12", PRIVATE),
        ("192.0.0.0/24", RESERVED),  # IETF protocol assignments
        ("192.0.2.0/24", RESERVED),  # documentation
        ("192.88.99.0/24", RESERVED),  # 6to4 relay anycast
        ("192.168.0.0/16", PRIVATE),
        ("198.18.0.0/15", RESERVED),  # benchmarking
        ("198.51.100.0/24", RESERVED),  # documentation
        ("203.0.113.0/24", RESERVED),  # documentation
        ("224.0.0.0/4", MULTICAST),
        ("240.0.0.0/4", RESERVED),  # future use, and the broadcast address
        # IPv6 (the forms embedding an IPv4 address are judged by that address, see _embedded)
        ("::/128", UNSPECIFIED),
        ("::1/128", LOOPBACK),
        ("::/8", RESERVED),  # IPv4-compatible and the rest of the reserved block
        ("64:ff9b:1::/48", PRIVATE),  # local-use NAT64
        ("100::/64", RESERVED),  # discard-only
        ("2001::/23", RESERVED),  # IETF protocol assignments, Teredo included
        ("2001:db8::/32", RESERVED),  # documentation
        ("fc00::/7", PRIVATE),  # unique local, fd00:ec2::254 (instance metadata) included
        ("fe80::/10", LINK_LOCAL),
        ("fec0::/10", PRIVATE),  # site-local (deprecated)
        ("ff00::/8", MULTICAST),
    )
)
# Addresses worth naming in a refusal: whoever reads it should see at once what was at stake.
_WELL_KNOWN = {
    ipaddress.ip_address("169.254.169.254"): "the instance metadata service",
    ipaddress.ip_address("fd00:ec2::254"): "the instance metadata service",
    ipaddress.ip_address("169.254.170.2"): "the container credentials endpoint",
    ipaddress.ip_address("169.254.169.253"): "the Amazon DNS server",
    ipaddress.ip_address("fd00:ec2::253"): "the Amazon DNS server",
}
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Names that are loopback without asking DNS (RFC 6761).
_LOOPBACK_NAMES = ("localhost", "*.localhost")


class AddressRefused(PermanentFailure):
    """An outbound request was refused by the policy: retrying cannot help."""


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, NAT64 (well-known prefix) or 6to4."""
    if address in _MAPPED:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def classify(address: IPAddress) -> str | None:
    """What unfits ``address`` for outbound requests by default ("a link-local address (the
    instance metadata service)"), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded(address)
        if embedded is not None:
            kind = classify(embedded)
            return f"an IPv6 form of {embedded}, {kind}" if kind else None
    for network, kind in _REFUSED:
        if address in network:
            known = _WELL_KNOWN.get(address)
            return f"{kind} ({known})" if known else kind
    return None


def parse_address(text: str) -> IPAddress:
    """An address as sockets spell it, without an IPv6 zone (``fe80::1%eth0``)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` is, when telling needs no DNS: an IP literal, including the shorthand
    forms the resolver accepts (``127.1``, ``2130706433``, ``0x7f.1``), or ``localhost``."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return parse_address(host)
    except ValueError:
        pass
    if any(fnmatch.fnmatchcase(host, name) for name in _LOOPBACK_NAMES):
        return ipaddress.IPv4Address("127.0.0.1")
    if ":" not in host:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            pass
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Which addresses and hosts outbound requests may go to (see the module's docstring)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # globs; empty allows every host

    @classmethod
    def of(cls, settings: Settings) -> OutboundPolicy:
        return _policy_of(settings.allowed_networks, settings.allowed_registries)

    def allows(self, address: IPAddress) -> bool:
        return self.refusal(address) is None

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused ("a private address"), or None if it may be connected to."""
        kind = classify(address)
        if kind is None or self._listed(address):
            return None
        return kind

    def _listed(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed_networks):
            return True
        embedded = _embedded(address) if isinstance(address, ipaddress.IPv6Address) else None
        return embedded is not None and any(embedded in network for network in self.allowed_networks)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (no port) matches ``allowed_hosts``; Docker Hub answers to its aliases."""
        if not self.allowed_hosts:
            return True
        host = host.strip("[]").rstrip(".").lower()
        names = DOCKER_HUB_ALIASES if host == DOCKER_HUB_REGISTRY else {host}
        return any(fnmatch.fnmatchcase(name, glob) for name in names for glob in self.allowed_hosts)

    def url_refusal(self, url: str) -> str | None:
        """Why ``url``, as a caller names it, is refused before any DNS lookup (its scheme, the
        allowlist, a literal address that is refused), or None."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            shown = f"{scheme}://" if scheme else "a URL without a scheme"
            return f"{shown[:40]} is not fetched: only http and https are"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "the URL names no host"
        if not self.host_allowed(host):
            globs = ", ".join(self.allowed_hosts[:MAX_GLOBS_QUOTED])
            more = ", ..." if len(self.allowed_hosts) > MAX_GLOBS_QUOTED else ""
            return f"host {host[:100]} is not in PREHEAT_ALLOWED_REGISTRIES ({globs}{more})"
        address = literal_address(host)
        if address is not None:
            reason = self.refusal(address)
            if reason is not None:
                what = host if str(address) == host else f"{host} ({address})"
                return f"{what[:100]} is {reason}; {ALLOW_HINT}"
        return None

    def check_url(self, url: str, what: str) -> None:
        """Raise :class:`AddressRefused` if ``url`` is refused before any DNS lookup."""
        reason = self.url_refusal(url)
        if reason is not None:
            raise AddressRefused(f"refused to fetch the {what}: {reason}")

    def check_handover(self, url: str, what: str, resolver: Resolver | None = None) -> None:
        """Raise :class:`AddressRefused` unless ``url`` may be handed to a supernode: what
        :meth:`check_url` checks, then every address its host resolves to (one refused address is
        enough to refuse it: the supernode's resolver may pick that one). ``resolver`` stands in
        for ``socket.getaddrinfo``."""
        reason = self.url_refusal(url)
        if reason is not None:
            raise AddressRefused(f"refused to hand the {what} to the supernode: {reason}")
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            infos = (resolver or socket.getaddrinfo)(host.strip("[]"), port, 0, socket.SOCK_STREAM)
        except ValueError:
            raise PermanentFailure(f"the {what} has an invalid port") from None
        except (socket.gaierror, UnicodeError) as exc:
            code = exc.args[0] if isinstance(exc, socket.gaierror) and exc.args else None
            unresolved = f"host {host[:100]} cannot be resolved before it is handed to the supernode"
            if code == socket.EAI_AGAIN:
                raise TransientFailure(f"{unresolved} (temporary DNS failure)") from None
            raise PermanentFailure(unresolved) from None
        refused: list[tuple[IPAddress, str]] = []
        for *_, sockaddr in infos:
            address = parse_address(str(sockaddr[0]))
            reason = self.refusal(address)
            if reason is not None and all(seen != address for seen, _ in refused):
                refused.append((address, reason))
        if refused:
            message = _refusal_message(host, refused).removeprefix("refused to connect to ")
            raise AddressRefused(f"refused to hand the {what} to the supernode: {message}")

    def connect(
        self,
        host: str,
        port: int,
        timeout: float | _TYPE_DEFAULT | None,
        source_address: tuple[str, int] | None = None,
        socket_options: Sequence[tuple[int, int, int | bytes]] | None = None,
    ) -> socket.socket:
        """A socket connected to an address of ``host`` that the policy allows: urllib3's
        ``create_connection`` with the refused addresses left out. Raises :class:`AddressRefused`
        when every address is refused; nothing is connected to then, so that a refused network
        cannot even be probed for open ports."""
        error: OSError | None = None
        for family, kind, proto, sockaddr in self._resolve(host.strip("[]"), port):
            sock = None
            try:
                sock = socket.socket(family, kind, proto)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if not isinstance(timeout, _TYPE_DEFAULT):
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                # The address actually connected to, as the kernel reports it.
                peer = parse_address(str(sock.getpeername()[0]))
            except OSError as exc:
                error = exc
                if sock is not None:
                    sock.close()
                continue
            reason = self.refusal(peer)
            if reason is not None:
                sock.close()
                raise AddressRefused(_refusal_message(host, [(peer, reason)], connected=True))
            return sock
        assert error is not None
        raise error

    def _resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """The addresses of ``host`` the policy allows, as ``(family, type, proto, sockaddr)``."""
        try:
            host.encode("idna")
        except UnicodeError:
            raise LocationParseError(f"'{host}', label empty or too long") from None
        allowed: list[tuple[Any, ...]] = []
        refused: list[tuple[IPAddress, str]] = []
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, allowed_gai_family(), socket.SOCK_STREAM
        ):
            address = parse_address(str(sockaddr[0]))
            reason = self.refusal(address)
            if reason is None:
                allowed.append((family, kind, proto, sockaddr))
            elif all(seen != address for seen, _ in refused):
                refused.append((address, reason))
        if allowed:
            return allowed
        if refused:
            raise AddressRefused(_refusal_message(host, refused))
        raise OSError("getaddrinfo returns an empty list")


@functools.lru_cache(maxsize=16)
def _policy_of(networks: tuple[str, ...], hosts: tuple[str, ...]) -> OutboundPolicy:
    return OutboundPolicy(
        allowed_networks=tuple(ipaddress.ip_network(network, strict=False) for network in networks),
        allowed_hosts=tuple(glob.strip().lower() for glob in hosts if glob.strip()),
    )


def _refusal_message(host: str, refused: list[tuple[IPAddress, str]], *, connected: bool = False) -> str:
    """``refused to connect to HOST: it resolves to ADDRESS, WHY; allow it with ...``."""
    address, reason = refused[0]
    shown = host[:100]
    if host == str(address):
        why = reason
    else:
        why = f"it {'is connected to' if connected else 'resolves to'} {address}, {reason}"
    if len(refused) > 1:
        others = len(refused) - 1
        why += f" (and {others} more refused address{'es' if others > 1 else ''})"
    return f"refused to connect to {shown}: {why}; {ALLOW_HINT}"


def check_request(request: PreheatRequest, settings: Settings) -> None:
    """Refuse at submit time, with an :class:`InvalidRequest`, what the policy refuses without DNS.

    Names that resolve to refused addresses are refused by the worker, where the connection is
    made (the task ends FAIL)."""
    if request.image is not None:
        url = request.image.base_url(settings.is_insecure(request.image.registry))
    else:
        url = request.url
    reason = OutboundPolicy.of(settings).url_refusal(url)
    if reason is not None:
        raise InvalidRequest(f"'url' is refused: {reason}")


def find_refusal(exc: BaseException) -> AddressRefused | None:
    """The :class:`AddressRefused` behind ``exc`` (should an HTTP library have wrapped it)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        pending.extend(item for item in (current.__cause__, current.__context__) if item is not None)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return None
