"""The completion-notice benchmark runs end to end with tiny sizes (figures are not judged here)."""

import json

import pytest

from bench import completion_notice

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_completion_notice_benchmark_writes_its_figures(tmp_path):
    output = tmp_path / "completion_notice.json"
    assert completion_notice.main(["--delays", "0.2,1", "--runs", "2", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["runs"] == {"0.2": 2, "1": 2}
    assert [len(notices) for notices in result["notice_seconds"].values()] == [2, 2]
    assert result["watching"]["per_task_minute_upper_bound"]["invocations"] > 0
    for figure in result["figures"].values():
        assert {"value", "target", "met", "goal", "unit"} <= set(figure)
        assert isinstance(figure["met"], bool)


def test_completion_notice_benchmark_through_the_scheduler_writes_its_figures(tmp_path):
    output = tmp_path / "completion_notice_scheduler.json"
    argv = ["--target", "scheduler", "--delays", "0.2,1", "--runs", "1", "--output", str(output)]
    assert completion_notice.main(argv) == 0
    result = json.loads(output.read_text())
    assert result["target"] == "scheduler"
    assert result["runs"] == {"0.2": 1, "1": 1}
    assert [len(notices) for notices in result["notice_seconds"].values()] == [1, 1]
    assert set(result["figures"]) >= {"notice_0.2s_median_seconds", "notice_1s_worst_seconds"}
    assert result["figures"]["notice_1s_median_seconds"]["label"].startswith("scheduler path")
    for figure in result["figures"].values():
        assert {"value", "target", "met", "goal", "unit"} <= set(figure)
        assert isinstance(figure["met"], bool)


def test_the_scheduler_module_runs_the_scheduler_target_with_its_defaults(monkeypatch):
    from bench import completion_notice_scheduler

    seen: list[list[str]] = []
    monkeypatch.setattr(completion_notice, "main", lambda argv: seen.append(argv) or 0)

    assert completion_notice_scheduler.main(["--runs", "1"]) == 0

    [argv] = seen
    assert argv[:2] == ["--target", "scheduler"]
    assert argv[-2:] == ["--runs", "1"]  # given options come last, so they win
