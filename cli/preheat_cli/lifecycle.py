"""``preheat peers TASK_ID`` (verify: which peers hold each blob now, as a table) and ``preheat
evict TASK_ID`` (take the task's blobs out of the cluster)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from preheat_cli.client import PreheatClient

if TYPE_CHECKING:
    from preheat_cli.main import Output

EXIT_OK = 0
EXIT_FAILED = 1


def add_commands(commands: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    peers = commands.add_parser(
        "peers",
        help="show which peers hold a task's blobs now",
        description="Ask the cluster now (not the stored progress) which peers hold each blob of a task.",
    )
    peers.add_argument("task_id", metavar="TASK_ID")
    add_common(peers)
    peers.set_defaults(handler=_peers)
    evict = commands.add_parser(
        "evict",
        help="take a task's blobs out of the cluster",
        description="Evict a task's blobs from the cluster (destructive; a running task is stopped first).",
    )
    evict.add_argument("task_id", metavar="TASK_ID")
    add_common(evict)
    evict.set_defaults(handler=_evict)


def _peers(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    answer = client.peers(args.task_id)
    if not answer.ok:
        return out.api_error(answer)
    out.envelope(answer)
    for line in peers_table(answer.data):
        out.line(line)
    # A script may gate on it: 0 only when every blob is warm and nothing is unknown.
    summary = answer.data.get("summary") or {}
    warm = summary.get("layersWarm") == summary.get("layersTotal") and not answer.data.get("pending")
    return EXIT_OK if warm and not answer.data.get("unreachable") else EXIT_FAILED


def _evict(args: argparse.Namespace, client: PreheatClient, out: Output) -> int:
    answer = client.evict(args.task_id)
    if not answer.ok:
        return out.api_error(answer)
    out.envelope(answer)
    data = answer.data
    evictions = [e for e in data.get("evictions") or [] if isinstance(e, Mapping)]
    done = sum(e.get("outcome") == "evicted" for e in evictions)
    out.line(
        f"task {data.get('taskId')} evicted at {data.get('evictedAt')}: {done} of {len(evictions)} evicted"
    )
    for eviction in evictions:
        if eviction.get("outcome") != "evicted":
            out.line(f"  {eviction.get('blob')} on {eviction.get('supernode')}: {eviction.get('outcome')}")
    return EXIT_OK if done == len(evictions) else EXIT_FAILED


def _finished(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def peers_table(data: Mapping[str, Any]) -> list[str]:
    """A row per peer holding a blob (blob, target, peer, finished), a row per blob held nowhere,
    then the summary; unknown where a target did not answer."""
    rows = [("BLOB", "TARGET", "PEER", "IP", "FINISHED", "WARM")]
    for blob in data.get("blobs") or []:
        if not isinstance(blob, Mapping):
            continue
        digest = str(blob.get("digest", ""))
        short = digest[:19] if digest.startswith("sha256:") else digest
        warm = _finished(blob.get("warm"))
        peers = [peer for peer in blob.get("peers") or [] if isinstance(peer, Mapping)]
        if not peers:
            rows.append((short, str(blob.get("target", "")), "-", "-", "-", warm))
        for peer in peers:
            finished = _finished(peer.get("finished"))
            rows.append(
                (
                    short,
                    str(blob.get("target", "")),
                    str(peer.get("host")),
                    str(peer.get("ip")),
                    finished,
                    warm,
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    summary = data.get("summary") or {}
    holders = ", ".join(summary.get("peersWithEveryLayer") or []) or "none"
    lines.append("")
    warm, total = summary.get("layersWarm", 0), summary.get("layersTotal", 0)
    lines.append(f"warm: {warm} of {total} blobs; peers with every blob: {holders}")
    if data.get("pending"):
        lines.append("pending: the manager is still answering (its get_task jobs); ask again in about 30 s")
    if data.get("unreachable"):
        lines.append(f"unreachable (finished unknown): {', '.join(data['unreachable'])}")
    lines.append(f"checked at {data.get('checkedAt')}")
    return lines
