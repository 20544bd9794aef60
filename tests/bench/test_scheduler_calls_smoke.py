"""The scheduler-calls benchmark runs end to end with tiny images and short holds (figures are not
judged here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scheduler_calls
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY
from tests.support.fixtures import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_scheduler_calls_benchmark_counts_the_calls_of_each_mode(tmp_path: Path):
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    output = tmp_path / "scheduler_calls.json"

    assert scheduler_calls.main(["--layers", "1,2", "--hold", "0.5", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert result["benchmark"] == "scheduler_calls"
    assert set(result["figures"]) == {
        f"{mode}_{layers}_layers_calls_per_task_second"
        for mode in ("url", "blob-digest")
        for layers in (1, 2)
    }
    for name, item in result["figures"].items():
        assert {"value", "target", "met", "goal", "unit"} <= set(item), name
        assert isinstance(item["met"], bool), name
    for by_layers in result["results"].values():
        assert set(by_layers) == {"1", "2"}
        for item in by_layers.values():
            assert set(item["calls"]) == set(scheduler_calls.COUNTED)
            assert item["total"] == sum(item["calls"].values()) > 0
            assert item["task_seconds"] > 0
    # URL ids: a PreheatFile per blob and StatFile looks; blob-digest ids: a PreheatImage per manifest.
    assert result["results"]["url"]["2"]["calls"]["PreheatFile"] == 3
    assert result["results"]["url"]["2"]["calls"]["StatFile"] > 0
    assert result["results"]["blob-digest"]["2"]["calls"]["PreheatImage"] >= 1
    assert result["results"]["blob-digest"]["2"]["calls"]["StatImage"] > 0
