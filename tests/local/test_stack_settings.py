"""What ``make run`` (``stack_from_environ``) sets up for the completion events and the watch."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.stack import DEFAULT_LOCAL_POLLERS, stack_from_environ


def test_make_run_writes_the_events_beside_its_state(tmp_path: Path):
    stack = stack_from_environ({"PREHEAT_LOCAL_DIR": str(tmp_path)})
    assert stack.events_file == tmp_path / "events.jsonl"


def test_make_run_polls_with_enough_threads_for_long_watches():
    assert stack_from_environ({})._poller_concurrency == DEFAULT_LOCAL_POLLERS >= 8
    assert stack_from_environ({"PREHEAT_LOCAL_POLLERS": "3"})._poller_concurrency == 3
    for bad in ("0", "many"):
        with pytest.raises(SystemExit, match="PREHEAT_LOCAL_POLLERS"):
            stack_from_environ({"PREHEAT_LOCAL_POLLERS": bad})
