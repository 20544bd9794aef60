"""Which supernodes get which blob.

``all`` sends every blob to every supernode. ``one`` picks a single supernode per blob by
rendezvous (highest-random-weight) hashing of the blob's digest: the load spreads evenly, the same
blob always lands on the same supernode (so later preheats and pulls hit its cache), and adding or
removing a supernode only moves the blobs that hashed to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from preheat.models import Blob


def rendezvous_choice(key: str, targets: Sequence[str]) -> str:
    def weight(target: str) -> bytes:
        return hashlib.sha256(f"{target}\x00{key}".encode()).digest()

    return max(targets, key=weight)


def targets_for(blob: Blob, targets: Sequence[str], scope: str) -> tuple[str, ...]:
    if scope == "one" and len(targets) > 1:
        return (rendezvous_choice(blob.label, targets),)
    return tuple(targets)
