"""Gate a rollout: is the task's content warm on the peers now? A yes or no a deployment tool reads.

The answer is for machines that read HTTP status (Flagger's ``confirm-rollout`` webhook waits for a
200; Argo Rollouts' web metric and Step Functions read the JSON): open when the task is SUCCESS and
a fresh verify (the cluster asked now, not the stored progress) shows every blob warm on the peers
the task's scope asks for, or on at least ``minPeers`` peers when the caller names a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from preheat.errors import InvalidRequest
from preheat.models import Task, TaskStatus

if TYPE_CHECKING:
    from preheat.lifecycle import Verification

MAX_MIN_PEERS = 10000


class Verifier(Protocol):
    def verify(self, task: Task) -> Verification: ...


class TaskReader(Protocol):
    def get(self, task_id: str) -> Task:
        """The task (TaskNotFound when there is none)."""


@dataclass(frozen=True)
class GateAnswer:
    """``open``: the rollout may go on; ``reason`` says why not; ``facts`` what was seen."""

    open: bool
    reason: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.open, "reason": self.reason, **self.facts}


def parse_min_peers(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_MIN_PEERS:
        raise InvalidRequest(f"'minPeers' must be a whole number from 1 to {MAX_MIN_PEERS}, got {raw[:32]!r}")
    return int(raw)


class Gate:
    def __init__(self, tasks: TaskReader, verifier: Verifier) -> None:
        self._tasks = tasks
        self._verifier = verifier

    def judge(self, task_id: str, min_peers_raw: str | None = None) -> GateAnswer:
        min_peers = parse_min_peers(min_peers_raw)  # a bad value is refused before any work
        task = self._tasks.get(task_id)
        facts: dict[str, Any] = {"taskId": task.task_id, "status": task.status.value}
        if task.status is not TaskStatus.SUCCESS:
            why = "it is still RUNNING" if task.status is TaskStatus.RUNNING else "it ended FAIL"
            return GateAnswer(False, f"the preheat task is not SUCCESS: {why}", facts)
        seen = self._verifier.verify(task)
        facts |= {
            "checkedAt": seen.to_api().get("checkedAt"),
            "layersWarm": seen.layers_warm,
            "layersTotal": seen.layers_total,
            "peersWithEveryLayer": seen.peers_with_every_layer,
        }
        if min_peers is not None:
            facts["minPeers"] = min_peers
        if seen.warm_on(min_peers):
            return GateAnswer(True, "every layer is warm on the peers asked for", facts)
        if seen.pending:
            return GateAnswer(
                False, "the cluster has not answered yet (its jobs are pending): ask again", facts
            )
        if seen.unreachable:
            facts["unreachable"] = list(seen.unreachable)
            return GateAnswer(False, f"{len(seen.unreachable)} target(s) did not answer", facts)
        wanted = f"on at least {min_peers} peer(s)" if min_peers else "on the peers the task's scope asks for"
        return GateAnswer(
            False, f"{seen.layers_warm} of {seen.layers_total} layer(s) are warm {wanted}", facts
        )
