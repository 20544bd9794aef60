"""A Dragonfly 2 scheduler that accepts a preheat and then never answers, through the local stack:
each look meets the per-call deadline, and the task ends FAIL at its deadline naming the scheduler.
(A module of its own: its stack has a short task deadline, and one stack runs at a time.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from local.dragonfly2_scheduler import ReferenceScheduler
from local.stack import LocalStack
from tests.support.blob_registry import BlobRegistry
from tests.support.local_stack import ended, submit

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

WAIT = 60  # seconds a task may take before the test fails; never reached when all is well


def scheduler_of(stack: LocalStack) -> ReferenceScheduler:
    assert stack.reference_scheduler is not None
    return stack.reference_scheduler


def test_a_scheduler_that_never_answers_ends_the_task_fail_at_its_deadline_naming_it(
    tmp_path: Path,
):
    with (
        BlobRegistry(auth="basic") as registry,
        LocalStack(
            target="dragonfly2-scheduler",
            cache_dir=tmp_path,
            visibility_timeout=5,
            extra_env={
                "PREHEAT_TASK_TIMEOUT": "6",
                "PREHEAT_SUPERNODE_TIMEOUT": "0.5",
                "PREHEAT_POLL_MAX_DELAY": "1",
            },
        ) as stack,
    ):
        scheduler = scheduler_of(stack)
        address = scheduler.address
        scheduler.peer_delay("seed-peer-0", 30.0)
        scheduler.peer_delay("seed-peer-1", 30.0)
        task = submit(
            stack,
            {
                "type": "image",
                "url": f"{registry.host}/{registry.repository}:{registry.tag}",
                "header": {"Authorization": registry.basic()},
                "platform": "linux/amd64",
            },
        )
        # Accepted (every blob preheated and looked at once), then silent: every later look meets
        # the per-call deadline.
        looked_at_each = time.monotonic() + WAIT
        while sum(method == "StatFile" for method, _ in scheduler.requests) < 3:
            assert time.monotonic() < looked_at_each, scheduler.requests
            time.sleep(0.05)
        scheduler.hang(True)
        try:
            data = ended(stack, task, timeout=WAIT)
        finally:
            scheduler.hang(False)

    assert data["status"] == "FAIL", data
    assert "timed out" in data["msg"]
    assert f"Dragonfly 2 scheduler {address}" in data["msg"]
