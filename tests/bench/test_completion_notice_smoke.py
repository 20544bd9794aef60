"""The completion-notice benchmark runs end to end with tiny sizes (figures are not judged here)."""

import json

import pytest

from bench import completion_notice

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_completion_notice_benchmark_writes_its_figures(tmp_path):
    output = tmp_path / "completion_notice.json"
    assert (
        completion_notice.main(
            ["--runs", "2", "--finish-delay", "0.2", "--parallel", "2", "--output", str(output)]
        )
        == 0
    )
    result = json.loads(output.read_text())
    assert result["runs"] == 2
    assert len(result["notice_seconds"]) == 2
    for figure in result["figures"].values():
        assert {"value", "target", "met", "goal", "unit"} <= set(figure)
        assert isinstance(figure["met"], bool)
