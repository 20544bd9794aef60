"""One typed settings object, parsed once from the ``PREHEAT_*`` environment variables."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from preheat.errors import InvalidRequest
from preheat.models import parse_platforms

N = TypeVar("N", int, float)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive(env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], kind: str) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _positive(env, name, default, int, "a whole number")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _positive(env, name, default, float, "a number")


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw in ("0", "0.0"):
        return 0.0
    return _positive_float(env, name, default)


def _platforms(raw: str) -> tuple[str, ...]:
    try:
        return tuple(str(platform) for platform in parse_platforms(raw, "PREHEAT_PLATFORMS"))
    except InvalidRequest as exc:
        raise ValueError(f"PREHEAT_PLATFORMS: {exc}") from None


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    """The variable's value if it is one of ``allowed`` (the first is the default)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return allowed[0]
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _networks(raw: str) -> tuple[str, ...]:
    networks = []
    for part in _split(raw):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(
                f"PREHEAT_ALLOWED_NETWORKS entries must be CIDRs like 10.0.0.0/8, got {part!r}"
            ) from None
    return tuple(networks)


def _cluster_ids(raw: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _split(raw))
    except ValueError:
        raise ValueError(
            f"PREHEAT_DRAGONFLY2_CLUSTERS must be comma-separated numbers, got {raw!r}"
        ) from None


def _host_map(raw: str) -> tuple[tuple[str, str], ...]:
    """``from=to`` pairs: the registry host the worker talks to, and the host nodes name."""
    pairs = dict(DEFAULT_NODE_REGISTRY_HOSTS)
    for part in _split(raw):
        source, sep, target = part.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(
                f"PREHEAT_NODE_REGISTRY_HOSTS entries must be 'registry=host nodes name', got {part!r}"
            )
        pairs[source.strip().lower()] = target.strip().lower()
    return tuple(sorted(pairs.items()))


def _params(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split("&") if part.strip())


def _optional_positive_int(env: Mapping[str, str], name: str) -> int | None:
    if not env.get(name, "").strip():
        return None
    return _positive_int(env, name, 1)


# preheat.handover: SCOPED, BROAD (the first is the default).
STORED_CREDENTIALS_HANDOVERS = ("scoped", "broad")


def _allowed_registries(raw: str) -> tuple[str, ...]:
    """Host globs; ``*`` (the template's explicit "any registry") allows every host, as empty does."""
    globs = tuple(glob.lower() for glob in _split(raw))
    return () if "*" in globs else globs


def _manifest_bytes(env: Mapping[str, str]) -> int:
    value = _positive_int(env, "PREHEAT_MAX_MANIFEST_BYTES", DEFAULT_MAX_MANIFEST_BYTES)
    if value > MANIFEST_BYTES_CEILING:
        raise ValueError(f"PREHEAT_MAX_MANIFEST_BYTES must be at most {MANIFEST_BYTES_CEILING}, got {value}")
    return value


# An image manifest's size: real ones weigh 1-300 KB (a 1000-layer OCI manifest, the most layers
# the service takes, is about 200 KB), so 1 MiB leaves room for heavy annotations. The limit is
# what one manifest may cost the worker: a JSON parse takes several times its bytes, and a hostile
# index lists 64 of them (issue 22: 8 children of 4 MiB raised a worker's peak RSS by 876 MiB).
DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
MANIFEST_BYTES_CEILING = 4 * 1024 * 1024

SUPERNODE_APIS = ("dragonfly1", "dragonfly2", "dragonfly2-scheduler")
# A scheduler's address: host:port, [v6]:port.
_SCHEDULER_ADDRESS = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")


def _targets(raw: str, supernode_api: str) -> tuple[str, ...]:
    """PREHEAT_SUPERNODES: http(s) base URLs, or for the schedulers their gRPC ``host:port``."""
    if supernode_api == "dragonfly2-scheduler":
        addresses = _split(raw)
        for address in addresses:
            if not _SCHEDULER_ADDRESS.match(address) or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
                raise ValueError(
                    "PREHEAT_SUPERNODES entries must be the schedulers' gRPC addresses as host:port "
                    f"(e.g. scheduler-0.dragonfly:8002) when PREHEAT_SUPERNODE_API is dragonfly2-scheduler, "
                    f"got {address!r}"
                )
        return addresses
    urls = tuple(url.rstrip("/") for url in _split(raw))
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"PREHEAT_SUPERNODES entries must be http(s) base URLs, got {_without_userinfo(url)!r}"
            )
        if "@" in urlsplit(url).netloc:
            # A base URL is quoted in task messages, logs and /api/check: a password in it would be
            # too. The supernode API takes no credentials; the manager's token has its own setting.
            raise ValueError(
                "PREHEAT_SUPERNODES entries must not carry user:password@ (the URL is shown in task "
                "messages and /api/check); for a Dragonfly 2 manager set PREHEAT_DRAGONFLY2_TOKEN or "
                f"PREHEAT_DRAGONFLY2_TOKEN_SECRET instead, got {_without_userinfo(url)!r}"
            )
    return urls


def _without_userinfo(url: str) -> str:
    """``url`` without what precedes its last ``@`` (user info), for messages; its scheme kept."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    return (head.split("://", 1)[0] + "://" if "://" in head else "") + tail


# Docker Hub: the worker must talk to registry-1.docker.io, nodes name it as dfdaemon's default
# mirror address does (https://index.docker.io).
DEFAULT_NODE_REGISTRY_HOSTS = (("registry-1.docker.io", "index.docker.io"),)


@dataclass(frozen=True)
class Settings:
    """Deployment configuration. Every field maps to one ``PREHEAT_*`` variable (see README)."""

    table_name: str = "preheat-tasks"
    queue_url: str = ""
    supernodes: tuple[str, ...] = ()
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    task_timeout_seconds: int = 1800
    task_ttl_days: int = 7
    poll_initial_delay_seconds: int = 1
    poll_max_delay_seconds: int = 30
    registry_timeout_seconds: float = 10.0
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES  # the largest manifest or index read
    supernode_timeout_seconds: float = 5.0
    check_timeout_seconds: float = 2.0
    # How long one worker step watches the supernodes (bounded by what the invocation has left and
    # by the task's deadline); 0 hands every wait over to delayed check messages instead.
    check_window_seconds: float = 90.0
    check_interval_seconds: float = 0.25  # the longest pause between looks in a watch's first 5 s
    watch_interval_seconds: float = 0.5  # ... and after them
    # A step that failed for a reason worth retrying comes back after this, doubling per attempt
    # (with jitter, and no sooner than a Retry-After asks) up to the cap.
    retry_base_delay_seconds: float = 1.0
    retry_max_delay_seconds: float = 60.0
    platforms: tuple[str, ...] = ()  # default narrowing of multi-platform images
    # "dragonfly1" (supernodes), "dragonfly2" (a manager's open API), or "dragonfly2-scheduler" (the
    # schedulers' gRPC preheat and stat): what PREHEAT_SUPERNODES names.
    supernode_api: str = "dragonfly1"
    supernode_scope: str = "all"  # "one": each blob to one supernode, by rendezvous hashing
    # Outbound requests to registries and file servers (never to the configured supernodes):
    # private, loopback, link-local, multicast and reserved addresses are refused unless listed.
    allowed_networks: tuple[str, ...] = ()  # CIDRs, e.g. 10.0.0.0/8 for an in-VPC registry
    allowed_registries: tuple[str, ...] = ()  # host globs; empty (or ``*``) allows every host
    registry_credentials_secret: str = ""  # Secrets Manager secret: registry host -> credentials
    # What of stored credentials (ECR, the secret) the peers are handed: "scoped" (a token for the
    # one repository, else nothing) or "broad" (the credential itself; refuses 'ips'). preheat.handover.
    stored_credentials_handover: str = "scoped"
    dedup_key: str = field(default="", repr=False)  # keys the hash of credentials in dedup claims
    dedup_key_secret: str = ""  # or the Secrets Manager secret holding that key
    dragonfly2_token: str = field(default="", repr=False)
    dragonfly2_token_secret: str = ""
    dragonfly2_clusters: tuple[int, ...] = ()
    dragonfly2_scope: str = "single_seed_peer"
    # What the supernode is handed: the registry blob URL nodes ask for, or the storage URL the
    # registry redirects to (the spec's literal wording). See README, "Which URL is warmed".
    layer_urls: str = "registry"
    # Registry host (as the worker talks to it) -> the host nodes name in their blob URLs.
    node_registry_hosts: tuple[tuple[str, str], ...] = DEFAULT_NODE_REGISTRY_HOSTS
    # What changes the task id a node computes; each defaults to what a node uses out of the box.
    dragonfly1_filter: tuple[str, ...] = ()
    dragonfly1_identifier: str = ""
    dragonfly2_tag: str = ""
    dragonfly2_application: str = ""
    dragonfly2_piece_length: int | None = None
    dragonfly2_filtered_query_params: tuple[str, ...] = ()  # empty: the client's default list
    dragonfly2_job_urls: str = "batch"  # one job per task with args.urls, or "single" (one per URL)
    # The task id Dragonfly 2 nodes give a registry blob: from its URL ("url", the default), or from
    # its digest alone ("blob-digest": dfdaemons with proxy.registryMirror.enableTaskIDBasedBlobDigest).
    dragonfly2_task_ids: str = "url"
    event_bus: str = "default"  # the EventBridge bus completion events go to (name or ARN)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        supernode_api = _choice(env, "PREHEAT_SUPERNODE_API", SUPERNODE_APIS)
        supernodes = _targets(env.get("PREHEAT_SUPERNODES", ""), supernode_api)
        return cls(
            table_name=env.get("PREHEAT_TABLE_NAME", cls.table_name),
            queue_url=env.get("PREHEAT_QUEUE_URL", cls.queue_url),
            supernodes=supernodes,
            insecure_registries=frozenset(
                host.lower() for host in _split(env.get("PREHEAT_INSECURE_REGISTRIES", ""))
            ),
            task_timeout_seconds=_positive_int(env, "PREHEAT_TASK_TIMEOUT", cls.task_timeout_seconds),
            task_ttl_days=_positive_int(env, "PREHEAT_TASK_TTL_DAYS", cls.task_ttl_days),
            poll_initial_delay_seconds=_positive_int(
                env, "PREHEAT_POLL_INITIAL_DELAY", cls.poll_initial_delay_seconds
            ),
            poll_max_delay_seconds=min(
                _positive_int(env, "PREHEAT_POLL_MAX_DELAY", cls.poll_max_delay_seconds),
                900,  # SQS refuses a DelaySeconds above 15 minutes
            ),
            registry_timeout_seconds=_positive_float(
                env, "PREHEAT_REGISTRY_TIMEOUT", cls.registry_timeout_seconds
            ),
            max_manifest_bytes=_manifest_bytes(env),
            supernode_timeout_seconds=_positive_float(
                env, "PREHEAT_SUPERNODE_TIMEOUT", cls.supernode_timeout_seconds
            ),
            check_timeout_seconds=_positive_float(env, "PREHEAT_CHECK_TIMEOUT", cls.check_timeout_seconds),
            check_window_seconds=_non_negative_float(env, "PREHEAT_CHECK_WINDOW", cls.check_window_seconds),
            check_interval_seconds=_positive_float(env, "PREHEAT_CHECK_INTERVAL", cls.check_interval_seconds),
            retry_base_delay_seconds=_positive_float(
                env, "PREHEAT_RETRY_BASE_DELAY", cls.retry_base_delay_seconds
            ),
            retry_max_delay_seconds=min(
                _positive_float(env, "PREHEAT_RETRY_MAX_DELAY", cls.retry_max_delay_seconds),
                43200.0,  # SQS's longest visibility timeout
            ),
            watch_interval_seconds=_positive_float(env, "PREHEAT_WATCH_INTERVAL", cls.watch_interval_seconds),
            platforms=_platforms(env.get("PREHEAT_PLATFORMS", "")),
            supernode_api=supernode_api,
            supernode_scope=_choice(env, "PREHEAT_SUPERNODE_SCOPE", ("all", "one")),
            allowed_networks=_networks(env.get("PREHEAT_ALLOWED_NETWORKS", "")),
            allowed_registries=_allowed_registries(env.get("PREHEAT_ALLOWED_REGISTRIES", "")),
            registry_credentials_secret=env.get("PREHEAT_REGISTRY_CREDENTIALS_SECRET", "").strip(),
            stored_credentials_handover=_choice(
                env, "PREHEAT_STORED_CREDENTIALS_HANDOVER", STORED_CREDENTIALS_HANDOVERS
            ),
            dedup_key=env.get("PREHEAT_DEDUP_KEY", "").strip(),
            dedup_key_secret=env.get("PREHEAT_DEDUP_KEY_SECRET", "").strip(),
            dragonfly2_token=env.get("PREHEAT_DRAGONFLY2_TOKEN", "").strip(),
            dragonfly2_token_secret=env.get("PREHEAT_DRAGONFLY2_TOKEN_SECRET", "").strip(),
            dragonfly2_clusters=_cluster_ids(env.get("PREHEAT_DRAGONFLY2_CLUSTERS", "")),
            dragonfly2_scope=_choice(
                env, "PREHEAT_DRAGONFLY2_SCOPE", ("single_seed_peer", "all_seed_peers", "all_peers")
            ),
            layer_urls=_choice(env, "PREHEAT_LAYER_URLS", ("registry", "storage")),
            node_registry_hosts=_host_map(env.get("PREHEAT_NODE_REGISTRY_HOSTS", "")),
            dragonfly1_filter=_params(env.get("PREHEAT_DRAGONFLY1_FILTER", "")),
            dragonfly1_identifier=env.get("PREHEAT_DRAGONFLY1_IDENTIFIER", "").strip(),
            dragonfly2_tag=env.get("PREHEAT_DRAGONFLY2_TAG", "").strip(),
            dragonfly2_application=env.get("PREHEAT_DRAGONFLY2_APPLICATION", "").strip(),
            dragonfly2_piece_length=_optional_positive_int(env, "PREHEAT_DRAGONFLY2_PIECE_LENGTH"),
            dragonfly2_filtered_query_params=_params(env.get("PREHEAT_DRAGONFLY2_FILTERED_QUERY_PARAMS", "")),
            dragonfly2_job_urls=_choice(env, "PREHEAT_DRAGONFLY2_JOB_URLS", ("batch", "single")),
            dragonfly2_task_ids=_choice(env, "PREHEAT_DRAGONFLY2_TASK_IDS", ("url", "blob-digest")),
            event_bus=env.get("PREHEAT_EVENT_BUS", "").strip() or cls.event_bus,
        )

    def node_host(self, registry: str) -> str:
        """The host nodes name for ``registry`` (``host`` or ``host:port``) in their blob URLs."""
        return dict(self.node_registry_hosts).get(registry.lower(), registry)

    def is_insecure(self, host: str) -> bool:
        """Whether ``host`` (``name`` or ``name:port``) is spoken to over plain http."""
        host = host.lower()
        return host in self.insecure_registries or host.rsplit(":", 1)[0] in self.insecure_registries


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, parsed on first use (not at import, so tests can set env first)."""
    return Settings.from_env()
