"""When a blob is warm on a Dragonfly 2 cluster: the peers a scheduler says hold it, judged by the
peers the task's scope asks for. Plain data in, a verdict out: no gRPC here.

The scheduler's own preheat picks its peers this way (``scheduler/job``: ``selectSeedPeers``,
``selectPeers``): ``single_seed_peer`` one seed peer; ``all_seed_peers`` every seed peer;
``all_peers`` every normal peer (seed peers are not among them). ``ips``, then ``count``, then
``percentage`` (rounded down, at least 1) narrow the last two. It takes the first ``count`` of a
map's range, an order no caller can know, so a count or a percentage is met by that many finished
peers of the kind, whichever they are; ``ips`` are met only by those very peers.

Host types (``pkg/types``): 0 is a normal peer, 1 a super seed peer; releases before v2.1.60 also
had 2 and 3 (strong and weak seed peers). Every type but 0 is a seed peer here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from preheat.models import BlobState, PeerCopy, Targeting

NORMAL_HOST_TYPE = 0
# The most peers a pending message names (the deadline's FAIL message quotes it).
MAX_NAMED_PEERS = 5


@dataclass(frozen=True)
class Host:
    """A host a scheduler lists (``ListHosts``)."""

    hostname: str
    ip: str
    seed: bool

    @property
    def name(self) -> str:
        return f"{self.hostname} ({self.ip})" if self.hostname else self.ip


@dataclass(frozen=True)
class Verdict:
    state: BlobState
    # Why a pending blob is pending: the peers it still waits for.
    waiting: str | None = None


def required_peers(hosts: Sequence[Host], scope: str, targeting: Targeting) -> tuple[list[Host], int]:
    """The peers the scope draws from and how many of them must have finished (for ``ips``: all of
    the named ones, which the list then holds alone)."""
    if scope == "single_seed_peer":
        seeds = [host for host in hosts if host.seed]
        return seeds, min(1, len(seeds))
    candidates = [host for host in hosts if host.seed == (scope == "all_seed_peers")]
    if targeting.ips:
        named = [host for host in candidates if host.ip in targeting.ips]
        return named, len(named)
    if targeting.count:
        return candidates, min(targeting.count, len(candidates))
    if targeting.percentage:
        return candidates, max(1, len(candidates) * targeting.percentage // 100) if candidates else 0
    return candidates, len(candidates)


def judge(
    label: str, holders: Iterable[PeerCopy], hosts: Sequence[Host], scope: str, targeting: Targeting
) -> Verdict:
    """SUCCESS when enough of the required peers hold the blob finished; else PENDING, saying which
    peers it waits for. Never FAILED: a scheduler reports no failed download, and one that has not
    finished may still (the task's deadline ends the wait)."""
    finished = {(peer.ip, peer.hostname) for peer in holders if peer.finished}
    finished_ips = {ip for ip, _ in finished}
    candidates, needed = required_peers(hosts, scope, targeting)
    short = _short(label)
    if not candidates or needed == 0:
        return Verdict(
            BlobState.PENDING, f"{short} has no peer to wait for: {_none_listed(scope, targeting)}"
        )

    def done(host: Host) -> bool:
        # A peer's hostname may differ between ListHosts and a stat's answer (FQDN or not): its IP
        # then decides, as long as one host of the cluster has that IP.
        return (host.ip, host.hostname) in finished or (
            host.ip in finished_ips and sum(h.ip == host.ip for h in hosts) == 1
        )

    have = [host for host in candidates if done(host)]
    if len(have) >= needed:
        return Verdict(BlobState.SUCCESS)
    missing = [host for host in candidates if not done(host)]
    shown = ", ".join(host.name for host in missing[:MAX_NAMED_PEERS])
    more = f" and {len(missing) - MAX_NAMED_PEERS} more" if len(missing) > MAX_NAMED_PEERS else ""
    if needed == len(candidates):
        return Verdict(BlobState.PENDING, f"{short} not finished on {shown}{more}")
    return Verdict(
        BlobState.PENDING,
        f"{short} finished on {len(have)} of the {needed} {_kind(scope)} it needs; not on {shown}{more}",
    )


def _short(label: str) -> str:
    """A digest's prefix (``sha256:`` and 12 hex digits), or a URL as it is."""
    algorithm, sep, hex_digits = label.partition(":")
    return f"{algorithm}:{hex_digits[:12]}" if sep and algorithm in ("sha256", "sha512") else label


def _kind(scope: str) -> str:
    return "peers" if scope == "all_peers" else "seed peers"


def _none_listed(scope: str, targeting: Targeting) -> str:
    if targeting.ips and scope != "single_seed_peer":
        return (
            f"the scheduler lists no {_kind(scope)} with the IPs {', '.join(targeting.ips[:MAX_NAMED_PEERS])}"
        )
    return f"the scheduler lists no {_kind(scope)}"
