"""The registry resolve benchmark runs end to end with tiny sizes and writes its JSON (no timing asserts:
the figures belong to ``python -m bench.registry_resolve`` on a quiet machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import registry_resolve

pytestmark = pytest.mark.integration

FIGURES = {
    "resolve_seconds",
    "sequential_estimate_seconds",
    "speedup",
    "token_fetches_per_resolve",
    "peak_parallel_requests",
    "connections_per_resolve",
}


def test_bench_writes_every_figure_with_value_target_and_met(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    output = tmp_path / "results" / "registry_resolve.json"

    code = registry_resolve.main(
        ["--layers", "5", "--delay-ms", "5", "--runs", "2", "--workers", "4", "--output", str(output)]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert result["benchmark"] == "registry_resolve"
    assert result["setup"] | {"server": None} == {
        "layers": 5,
        "blobs": 6,
        "delay_ms": 5.0,
        "runs": 2,
        "max_workers": 4,
        "server": None,
    }
    assert len(result["runs_seconds"]) == 2
    # 401, token, manifest, then a redirect and a storage answer per blob.
    assert result["requests_per_resolve"] == 3 + 2 * 6
    # Handing over registry blob URLs (the default): 401, token, manifest, nothing per blob.
    assert result["requests_per_resolve_registry_urls"] == 3
    assert set(result["figures"]) == FIGURES
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["value"], int | float), name
        assert isinstance(item["target"], int | float), name
        assert isinstance(item["met"], bool), name
    assert result["figures"]["sequential_estimate_seconds"]["round_trips"] == 15
    assert result["figures"]["token_fetches_per_resolve"]["value"] == 1
    table = capsys.readouterr().out
    assert "resolve time (median)" in table
    assert str(output) in table
