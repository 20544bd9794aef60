"""The package-size benchmark zips what ``sam build`` made, splits the layer by distribution and
finds a bundled AWS SDK (and what pulled it in); once over a small stand-in build, once over a real
``sam build`` (slow, like tests/template's build test)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench import package_size
from local.template import Template

TEMPLATE = Template.load(package_size.TEMPLATE)


def _distribution(site: Path, name: str, package: str, files: dict[str, bytes], requires: list[str]) -> None:
    """A package as pip installs it: its files and a dist-info with METADATA and RECORD."""
    for relative, content in files.items():
        path = site / package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    metadata = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    (dist_info / "METADATA").write_text("\n".join(metadata) + "\n")
    record = [f"{package}/{relative},," for relative in files] + [f"{dist_info.name}/METADATA,,"]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def stand_in_build(tmp_path: Path) -> Path:
    """The shape of a sam build of template.yaml: every function's app.py and a layer under python/,
    holding powertools (with the tracer extra), the X-Ray SDK and the botocore it pulls in."""
    build = tmp_path / "build"
    for logical_id in TEMPLATE.functions:
        (build / logical_id).mkdir(parents=True)
        (build / logical_id / "app.py").write_text(
            "def lambda_handler(event, context):\n    return {}\n" * 20
        )
    site = build / "SharedLayer" / "python"
    site.mkdir(parents=True)
    _distribution(
        site,
        "aws-lambda-powertools",
        "aws_lambda_powertools",
        {"__init__.py": b"x = 1\n" * 2000},
        ["jmespath", 'aws-xray-sdk ; extra == "tracer"'],
    )
    _distribution(site, "aws-xray-sdk", "aws_xray_sdk", {"__init__.py": b"y = 2\n" * 100}, ["botocore>=1.11"])
    _distribution(site, "jmespath", "jmespath", {"__init__.py": b"j = 3\n" * 100}, [])
    _distribution(
        site,
        "botocore",
        "botocore",
        {"__init__.py": b"b = 4\n", "data/model.json": os.urandom(50_000)},
        ["jmespath", "python-dateutil"],
    )
    _distribution(site, "python-dateutil", "dateutil", {"__init__.py": b"d = 5\n" * 100}, [])
    (site / "preheat").mkdir()
    (site / "preheat" / "worker.py").write_text("# the project's own package\n" * 50)
    # The worker's and the check's second layer: gRPC and the scheduler bindings.
    grpc_site = build / "GrpcLayer" / "python"
    grpc_site.mkdir(parents=True)
    _distribution(grpc_site, "grpcio", "grpc", {"_cython/cygrpc.so": os.urandom(20_000)}, [])
    _distribution(
        grpc_site, "dragonfly-api", "dragonfly_api", {"scheduler_pb2.py": b"s = 6\n" * 100}, ["grpcio"]
    )
    return build


def test_a_stand_in_build_is_zipped_split_and_its_bundled_sdk_traced(stand_in_build: Path, tmp_path: Path):
    output = tmp_path / "package_size.json"

    assert package_size.main(["--build-dir", str(stand_in_build), "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert result["benchmark"] == "package_size"
    figures = result["figures"]
    assert {f"{name}_zipped" for name in TEMPLATE.functions} <= set(figures)
    assert {"SharedLayer_zipped", "largest_unzipped", "sdk_bundled"} <= set(figures)
    for name, item in figures.items():
        assert {"value", "target", "met"} <= set(item), name
    layer = result["layers"]["SharedLayer"]
    # Deflated, as SAM uploads it: the random bytes stay, the repeated lines shrink.
    assert 50_000 < layer["zipped_bytes"] < layer["unzipped_bytes"]
    assert layer["distributions"][0]["name"] == "botocore"
    assert layer["distributions"][0]["top_level"] == ["botocore"]
    assert "preheat" in {part["name"] for part in layer["distributions"]}
    sdk = figures["sdk_bundled"]
    assert (sdk["value"], sdk["met"]) == (1, False)
    assert result["sdk_bundled"][0]["required_by"] == ["aws-xray-sdk"]
    # jmespath stays: powertools needs it too.
    assert result["only_for_the_sdk"]["SharedLayer"]["distributions"] == ["botocore", "python-dateutil"]
    assert figures["largest_unzipped"]["met"] is True
    # Only the functions that may talk to schedulers carry the gRPC layer, and count it: the worker
    # and the check, and those that verify, evict and re-warm (lifecycle, gate, sweeper).
    grpc_layer = result["layers"]["GrpcLayer"]
    assert {part["name"] for part in grpc_layer["distributions"]} == {"grpcio", "dragonfly-api"}
    carrying = {name for name, item in result["functions"].items() if "GrpcLayer" in item["layers"]}
    assert carrying == {
        "WorkerFunction",
        "CheckFunction",
        "LifecycleFunction",
        "GateFunction",
        "SweeperFunction",
    }


@pytest.mark.slow
def test_a_real_sam_build_is_measured_without_touching_the_work_tree(tmp_path: Path):
    # Fail, never skip: make test installs the SAM CLI and makes its venv from Python 3.13.
    if not package_size.SAM.exists():
        pytest.fail("SAM CLI not installed: run `make test` (it installs it)", pytrace=False)
    if shutil.which("python3.13", path=package_size.sam_environment()["PATH"]) is None:
        pytest.fail("sam build for the python3.13 runtime needs python3.13 on PATH", pytrace=False)
    deps = package_size.PROJECT_ROOT / ".aws-sam" / "deps"
    before = sorted(deps.iterdir()) if deps.is_dir() else []
    output = tmp_path / "package_size.json"

    assert package_size.main(["--output", str(output)]) == 0

    result = json.loads(output.read_text())
    assert result["setup"]["build_seconds"] > 0
    layer = result["layers"]["SharedLayer"]
    names = {part["name"].lower().replace("-", "_") for part in layer["distributions"]}
    assert {"aws_lambda_powertools", "preheat"} <= names
    assert "boto3" not in names
    assert 0 < layer["zipped_bytes"] < package_size.ZIPPED_LIMIT_BYTES
    assert result["figures"]["largest_unzipped"]["met"] is True
    for name in TEMPLATE.functions:
        assert result["functions"][name]["zipped_bytes"] > 0
    # SAM's dependency cache went to the scratch directory, not the work tree.
    assert (sorted(deps.iterdir()) if deps.is_dir() else []) == before
