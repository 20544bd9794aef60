"""The listing benchmark runs end to end with tiny sizes (figures are not judged here)."""

import json

import pytest

from bench import list_tasks

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_list_tasks_benchmark_writes_its_figures(tmp_path):
    output = tmp_path / "list_tasks.json"
    assert list_tasks.main(["--tasks", "60", "--runs", "3", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["tasks"] == 60
    assert len(result["first_page_seconds"]) == 3
    assert "list_page_median_seconds" in result["figures"]
    for figure in result["figures"].values():
        assert {"value", "target", "met", "goal", "unit"} <= set(figure)
        assert isinstance(figure["met"], bool)
