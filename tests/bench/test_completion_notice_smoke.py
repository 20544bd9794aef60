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
