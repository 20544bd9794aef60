"""The latency benchmark runs end to end with tiny sizes and writes its JSON (no timing asserts: the
figures belong to ``python -m bench.latency`` on a quiet machine)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import latency
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY
from tests.support.fixtures import require_tools


def check_figures(figures: dict[str, dict[str, object]]) -> None:
    for name, item in figures.items():
        assert {"value", "target", "met", "goal", "unit"} <= set(item), name
        assert isinstance(item["value"], int | float), name
        assert isinstance(item["target"], int | float), name
        assert isinstance(item["met"], bool), name


@pytest.mark.integration
@pytest.mark.xdist_group("local-stack")
def test_latency_benchmark_writes_a_figure_per_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    output = tmp_path / "latency.json"

    code = latency.main(
        [
            *("--layers", "1,2", "--index-layers", "1", "--delay-ms", "5", "--runs", "1"),
            *("--warmup", "0", "--aws-samples", "2", "--poll-ms", "10", "--output", str(output)),
        ]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert result["benchmark"] == "latency"
    assert set(result["cases"]) == {"layers_1", "layers_2", "index_2x1"}
    assert set(result["figures"]) == {"layers_1_vs_floor", "layers_2_vs_floor", "index_2x1_vs_floor"}
    check_figures(result["figures"])
    one, index = result["cases"]["layers_1"], result["cases"]["index_2x1"]
    assert one["blobs"] == 2
    assert len(one["runs_seconds"]) == 1
    # The manifest only: registry blob URLs (the default) need no request per blob, and the
    # supernode downloads from the registry directly.
    assert one["registry_requests_per_run"] == 1
    assert one["supernode_creates_per_run"] == 2
    assert index["floor_parts"]["registry_round_trips"] == {
        "token": 0,
        "manifest": 1,
        "platform manifests": 1,
    }
    assert index["floor_seconds"] > one["floor_seconds"] > 0
    assert set(result["aws_on_path_ms"]) == {label for label, _ in latency.SEQUENTIAL_AWS}
    assert "latency 1 layer / floor" in capsys.readouterr().out


def test_the_100_layer_image_is_compared_with_the_1_layer_image():
    cases = latency.cases_for([1, 100], 0)
    runs = {
        "layers_1": latency.CaseRuns(
            [0.3, 0.2, 0.4], [5] * 3, [2] * 3, [2] * 3, [2] * 3, [2] * 3, [0.01] * 3, [0.1] * 3
        ),
        "layers_100": latency.CaseRuns(
            [0.5, 0.6, 0.7], [203] * 3, [32] * 3, [101] * 3, [101] * 3, [16] * 3, [0.2] * 3, [0.3] * 3
        ),
    }
    timings = latency.AwsTimings()
    for _, key in latency.SEQUENTIAL_AWS:
        timings.add(key, 0.005)
    args = argparse.Namespace(delay_ms=50.0, supernode_delay_ms=None, finish_delay=0.0, runs=3, warmup=1)
    args.poll_ms, args.env, args.argv = 25.0, {}, []

    result = latency.report(args, cases, runs, timings)

    # 1 registry round trip (the manifest: registry blob URLs need no blob round) and 2 supernode
    # ones, 50 ms each, and 6 AWS steps of 5 ms.
    assert result["cases"]["layers_1"]["floor_seconds"] == pytest.approx(0.15 + 0.03, abs=1e-4)
    ratio = result["figures"]["layers_100_vs_layers_1"]
    assert ratio["value"] == pytest.approx(2.0)
    assert ratio["met"] is False
    assert result["figures"]["layers_1_vs_floor"]["value"] == pytest.approx(0.3 / 0.18, abs=1e-3)

    # The spec's literal mode adds the round of blob probes back to the floor.
    args.env = {"PREHEAT_LAYER_URLS": "storage"}
    storage = latency.report(args, cases, runs, timings)
    assert storage["cases"]["layers_1"]["floor_seconds"] == pytest.approx(0.2 + 0.03, abs=1e-4)
