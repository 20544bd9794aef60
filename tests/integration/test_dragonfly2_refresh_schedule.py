"""The manager path on production's clock: the fake manager refreshes a job's state on the real
manager's schedule (0, 30, 90, 210 s... after the create), and the service must wait for it without
counting the wait as a failure or giving up. A blob warm at once reads SUCCESS at the 30 s refresh,
and the task ends SUCCESS, announced, right after it. (About 35 s of wall time.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from local.dragonfly2_manager import FakeDragonfly2Manager
from tests.support.http_server import QuietHandler, serve
from tests.support.local_stack import dragonfly2_stack, events_of, status_answers, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

TOKEN = "pat-schedule-0123456789abcdef"
PAYLOAD = b"a short layer\n" * 100


class Files(QuietHandler):
    def do_GET(self) -> None:
        self.answer(PAYLOAD)


def test_a_short_blob_reads_success_at_the_30_s_refresh_and_the_task_ends_success(tmp_path: Path) -> None:
    with (
        serve(Files) as files,
        FakeDragonfly2Manager(tmp_path / "manager", TOKEN) as manager,
        dragonfly2_stack(manager, TOKEN, tmp_path / "unused", events_file=tmp_path / "events.jsonl") as stack,
    ):
        assert not manager.answer_at_once
        task_id = submit(stack, {"type": "file", "url": f"{files.url}/layer.bin"})
        # The manager's first refresh, right after the create, cannot see the download finished
        # before it started; every status answer until the next refresh says RUNNING, with no error.
        answers = list(status_answers(stack, task_id, timeout=60, interval=0.5))

        *waiting, last = [answer["data"] for answer in answers]
        assert last["status"] == "SUCCESS", last
        assert waiting, "the task ended before the manager's 30 s refresh"
        assert all(data["status"] == "RUNNING" and not data.get("msg") for data in waiting), waiting
        # Seen at the second refresh, 30 s after the create: one job, polled twice, then left alone.
        assert manager.refreshes == 2
        job = manager.job(1)
        assert job is not None
        assert job["state"] == "SUCCESS"
        assert f"sha256:{hashlib.sha256(PAYLOAD).hexdigest()}" in manager.cached_digests()
        (event,) = events_of(stack, task_id)
        assert event["detail"]["status"] == "SUCCESS"
