"""The node-hits benchmark runs end to end with a one-layer image and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import node_hits
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY
from tests.support.fixtures import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]


def test_node_hits_benchmark_writes_a_table_of_both_modes(tmp_path: Path):
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    output = tmp_path / "node_hits.json"

    assert node_hits.main(["--layers", "1", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert result["setup"]["blobs"] == 2  # the config and the layer
    modes = ("url", "blob-digest")
    assert {preheated: set(by_node) for preheated, by_node in result["hits"].items()} == {
        mode: set(modes) for mode in modes
    }
    assert len(result["figures"]) == 4
    for name, item in result["figures"].items():
        assert {"value", "target", "met", "goal", "unit"} <= set(item), name
        assert isinstance(item["met"], bool), name
        assert 0 <= item["value"] <= 2, name
    # The cross cases expect none; the matching ones every blob.
    assert result["figures"]["preheated_url_node_blob-digest_hits"]["target"] == 0
    assert result["figures"]["preheated_blob-digest_node_blob-digest_hits"]["target"] == 2
