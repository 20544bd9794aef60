"""The throughput benchmark runs end to end with tiny sizes and writes its JSON (no rate asserts:
the figures belong to ``python -m bench.throughput`` on a quiet machine)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench import throughput

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

REQUESTS = 20
FIGURES = {
    "requests_per_second",
    "vs_floor",
    "not_accepted",
    "shared_ids",
    "crossed",
    "succeeded",
    "failed",
    "lost",
    "all_terminal_seconds",
}


def test_every_request_becomes_a_terminal_task_and_the_floor_is_measured_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    output = tmp_path / "throughput.json"

    code = throughput.main(
        ["--requests", str(REQUESTS), "--clients", "4", "--rounds", "2", "--output", str(output)]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert result["benchmark"] == "throughput"
    assert set(result["figures"]) == FIGURES
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["met"], bool), name
    figures = result["figures"]
    assert figures["succeeded"]["value"] == 2 * REQUESTS
    assert figures["failed"]["value"] == 0
    assert figures["lost"]["value"] == 0
    assert figures["not_accepted"]["value"] == 0
    assert figures["shared_ids"]["value"] == figures["crossed"]["value"] == 0
    assert figures["requests_per_second"]["value"] > 0
    floors = [round_["per_second"] for round_ in result["rounds"]["floor"]]
    assert len(floors) == 2
    assert min(floors) > 0
    # The ratio's target follows the floor measured in the same run (the median of its rounds).
    assert figures["requests_per_second"]["target"] == pytest.approx(0.7 * statistics.median(floors), abs=0.2)
    assert result["moto_call_ms"]["service_table_items"] >= 2 * REQUESTS  # each task and its claim
    assert "API / floor" in capsys.readouterr().out
