"""The sweeper's entry point: EventBridge Scheduler's ``SweeperSchedule`` invokes it every few
minutes (its input is ignored: a sweep reads the table's overdue tasks and due keep-warm checks,
not the event).

What an invocation answers (and logs)::

    {"ended": [<taskId>, ...], "skipped": 0, "handedToWorker": [...], "complete": true,
     "keepWarm": {"checked": [...], "rewarmed": {<taskId>: ["<blob>@<target>", ...]}, "stopped": [...],
                  "postponed": [...], "failed": [...]}}

A sweep that could not end or announce a task raises (``DependencyFailure``), after ending the
others, so the invocation counts as failed and Lambda's asynchronous retries sweep again; what the
retry finds ended already is not found again (it is no longer RUNNING).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from preheat import bootstrap
from preheat.observability import logger, metrics, tracer

METRIC_SWEPT = "TasksSwept"
METRIC_REWARMED = "KeepWarmRewarmed"


@tracer.capture_method(capture_response=False)
def handle_sweep(event: Any) -> dict[str, object]:
    # The keep-warm checks first: a failed overdue sweep raises (to be retried), and should not
    # hold back the checks; a retried sweep finds no check due twice (each moved its next time on).
    kept = bootstrap.keep_warmer().run_due()
    metrics.add_metric(name=METRIC_REWARMED, unit=MetricUnit.Count, value=len(kept.rewarmed))
    if kept.checked or kept.stopped or kept.failed:
        logger.info("keep-warm checks run", extra=kept.to_json())
    result = bootstrap.sweeper().sweep()
    metrics.add_metric(name=METRIC_SWEPT, unit=MetricUnit.Count, value=len(result.ended))
    answer = result.to_json() | {"keepWarm": kept.to_json()}
    if result.ended:
        # A task ended here had a dead chain: worth an operator's look (why did its chain die?).
        logger.warning("overdue tasks ended by the sweeper", extra=answer)
    else:
        logger.info("sweep found no overdue task", extra=answer)
    return answer
