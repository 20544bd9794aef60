"""The worker-memory benchmark resolves (and preheats) a small image in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import worker_memory


def test_padded_manifest_stays_just_under_its_size():
    manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": f"sha256:{n}"} for n in range(7)]})

    padded = worker_memory.padded_manifest(manifest.encode(), 10_000)

    assert 9_900 <= len(padded) <= 10_000
    assert len(json.loads(padded)["layers"]) == 7


@pytest.mark.integration
def test_worker_memory_benchmark_writes_its_figures(tmp_path: Path):
    output = tmp_path / "worker_memory.json"

    assert worker_memory.main(["--layers", "5", "--manifest-mib", "0.05", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert set(result["figures"]) == {"resolve_peak_rss", "start_step_peak_rss"}
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["met"], bool), name
    measured = result["measured"]
    assert measured["blobs"] == 6
    assert measured["import_mib"] <= measured["resolve_mib"] <= measured["step_mib"]
    assert measured["supernode_requests"] >= 2 * 6
