"""``python -m bench`` runs the benchmarks it is given and prints one table of all their figures."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench.common import figure, write_result


def fake_benchmark(name: str, figures: dict[str, Any] | None) -> types.ModuleType:
    module = types.ModuleType(f"bench.{name}")

    def main(argv: list[str]) -> int:
        if figures is None:
            raise RuntimeError("no registry here")
        output = Path(argv[argv.index("--output") + 1])
        write_result(output, {"benchmark": name, "argv": argv, "figures": figures})
        print("its own table")
        return 0

    module.main = main  # type: ignore[attr-defined]
    module.QUICK_ARGS = ["--runs", "1"]  # type: ignore[attr-defined]
    return module


def test_every_benchmark_of_the_package_is_found():
    names = bench_main.discover()

    assert names[: len(bench_main.ORDER)] == list(bench_main.ORDER)
    assert "common" not in names


def test_one_table_and_a_summary_of_every_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    fast = figure(0.2, 1.0, "at most", "s", label="fast enough", detail="median of 3")
    slow = figure(3.0, 1.3, "at most", "x", label="too slow")
    monkeypatch.setattr(bench_main, "discover", lambda: ["alpha", "beta", "gamma"])
    monkeypatch.setitem(sys.modules, "bench.alpha", fake_benchmark("alpha", {"fast": fast}))
    monkeypatch.setitem(sys.modules, "bench.beta", fake_benchmark("beta", {"slow": slow}))
    monkeypatch.setitem(sys.modules, "bench.gamma", fake_benchmark("gamma", None))

    code = bench_main.main(["--quick", "--skip", "gamma", "--results", str(tmp_path)])

    assert code == 0
    out = capsys.readouterr().out
    assert "its own table" not in out  # kept quiet without --verbose
    assert "fast enough" in out
    assert "too slow" in out
    assert "1 of 2 targets met" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["figures_total"] == 2
    assert summary["all_met"] is False
    assert summary["benchmarks"]["alpha"]["figures"]["fast"]["met"] is True
    assert summary["benchmarks"]["alpha"]["argv"] == ["--runs", "1"]
    assert "cpus" in summary["machine"]

    assert bench_main.main(["--only", "alpha", "--markdown", "--results", str(tmp_path)]) == 0
    assert "| alpha | fast enough | 0.200 s | <= 1.000 s | yes | median of 3 |" in capsys.readouterr().out
    assert bench_main.main(["--only", "beta", "--strict", "--results", str(tmp_path)]) == 1


def test_a_benchmark_that_fails_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setattr(bench_main, "discover", lambda: ["alpha", "gamma"])
    monkeypatch.setitem(
        sys.modules, "bench.alpha", fake_benchmark("alpha", {"fast": figure(1, 2, "at most")})
    )
    monkeypatch.setitem(sys.modules, "bench.gamma", fake_benchmark("gamma", None))

    assert bench_main.main(["--results", str(tmp_path)]) == 1

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == ["gamma"]
    assert "no registry here" in summary["benchmarks"]["gamma"]["error"]
    assert "did not run" in capsys.readouterr().out
