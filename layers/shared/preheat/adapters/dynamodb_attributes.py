"""What the task store reads of DynamoDB's items and refusals: the item's small attributes
(targeting, the listing's layer counts, string lists) and a claim's refusal; a module of its own so
that the store's main module stays within its size."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from preheat.models import LayerCounts, Targeting

__all__ = ["_claim_refused", "_layer_counts", "_strings", "_targeting"]


def _targeting(attribute: dict[str, Any] | None) -> Targeting:
    if not attribute:
        return Targeting()
    data = json.loads(attribute["S"])
    return Targeting(
        scope=data.get("scope"),
        cluster_ids=tuple(data.get("clusterIds", ())),
        ips=tuple(data.get("ips", ())),
        count=data.get("count"),
        percentage=data.get("percentage"),
    )


def _layer_counts(attribute: dict[str, Any] | None) -> LayerCounts | None:
    if not attribute:
        return None
    total, succeeded, failed, pending = (int(value["N"]) for value in attribute["L"])
    return LayerCounts(total, succeeded, failed, pending)


def _strings(attribute: dict[str, Any] | None) -> tuple[str, ...]:
    return tuple(value["S"] for value in (attribute or {}).get("L", []))


def _claim_refused(exc: ClientError) -> bool:
    """Whether a transaction was cancelled because the claim (its second item) is held."""
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons") or []
    if len(reasons) >= 2:
        return bool(reasons[1].get("Code") == "ConditionalCheckFailed")
    return "ConditionalCheckFailed" in str(exc.response.get("Error", {}).get("Message", ""))
