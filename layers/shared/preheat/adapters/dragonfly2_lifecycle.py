"""Verify and evict through a Dragonfly 2 manager: ``get_task`` and ``delete_task`` jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from preheat.errors import NotSupported
from preheat.models import BlobProgress, Targeting
from preheat.ports import Holding

if TYPE_CHECKING:
    from preheat.adapters.dragonfly2 import Dragonfly2Driver


def holders(driver: Dragonfly2Driver, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
    raise NotSupported("verify through a Dragonfly 2 manager is not available yet")


def evict(driver: Dragonfly2Driver, blobs: Sequence[BlobProgress]) -> list[str]:
    raise NotSupported("evict through a Dragonfly 2 manager is not available yet")
