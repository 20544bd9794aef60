"""The verify benchmark runs end to end with tiny sizes on the two quick targets (figures are not
judged here; the manager's part waits for its 30 s refresh, which `python -m bench.verify` runs)."""

import json

import pytest

from bench import verify

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_verify_benchmark_writes_its_figures(tmp_path):
    output = tmp_path / "verify.json"
    argv = ["--layers", "5", "--runs", "2", "--only", "dragonfly1,scheduler", "--output", str(output)]
    assert verify.main(argv) == 0
    result = json.loads(output.read_text())
    assert result["layers"] == 5
    assert set(result["figures"]) == {"dragonfly1_verify_seconds", "scheduler_verify_seconds"}
    for figure in result["figures"].values():
        assert {"value", "target", "met", "goal", "unit"} <= set(figure)
        assert isinstance(figure["met"], bool)
