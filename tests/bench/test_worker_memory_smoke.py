"""The worker-memory benchmark resolves (and preheats) a small image in a fresh process."""

from __future__ import annotations

import hashlib
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

    arguments = ["--layers", "5", "--manifest-mib", "0.05", "--hostile-children", "2"]
    assert worker_memory.main([*arguments, "--hostile-child-mib", "0.5", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert set(result["figures"]) == {"resolve_peak_rss", "start_step_peak_rss", "hostile_index_peak_rss"}
    for name, item in result["figures"].items():
        assert {"value", "target", "met"} <= set(item), name
        assert isinstance(item["met"], bool), name
    measured = result["measured"]
    assert measured["blobs"] == 6
    assert measured["import_mib"] <= measured["resolve_mib"] <= measured["step_mib"]
    assert measured["supernode_requests"] >= 2 * 6
    # The hostile index is refused (each child names thousands of empty layers), never resolved.
    assert "at most 1000 layers" in measured["hostile_outcome"]
    assert measured["hostile_manifest_requests"] >= 2


def test_the_hostile_index_matches_the_digests_it_names():
    hostile = worker_memory.HostileIndex(children=2, child_bytes=64 * 1024)
    try:
        index = json.loads(hostile.manifests["hostile"])
        for entry in index["manifests"]:
            body = hostile.manifests[entry["digest"]]
            assert entry["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
            assert len(json.loads(body)["layers"]) > 300
    finally:
        hostile.server.close()
