"""Package size: each function and the shared layer as ``sam build`` makes them, zipped as SAM ships them.

    .venv/bin/python -m bench.package_size [--build-dir DIR]

What it runs: ``sam build`` (the project's SAM CLI in ``.tools/sam``, ``make .tools/sam/.installed``)
of ``template.yaml`` with the flags of ``samconfig.toml``, into a temporary build directory, from a
temporary working directory: SAM keeps its dependency cache (``.aws-sam/deps``) in the working
directory, so the work tree is left as it was. The project's virtual environment goes first on
``PATH``, as the Makefile arranges, because SAM's Python builder wants the runtime's
``python3.13``. ``--build-dir`` measures an existing build instead.

How it measures: every built function directory, and the layer's, is zipped in memory the way
``sam package``/``sam deploy`` zip them (every file, deflate at zlib's default level, paths relative
to the directory); the figures are the archive's size and the files' total size. The layer's
content is also split by the Python distribution each file belongs to (from the ``RECORD`` of
every ``*.dist-info``; files no distribution lists, such as the project's own ``preheat`` package,
by their top-level name), zipped and unzipped, largest first.

Targets, Lambda's limits: each zip at most 50 MiB (a direct upload's limit, 52,428,800 bytes);
the largest function plus the layer, unzipped, below 250 MiB (262,144,000 bytes, the limit of a
function and all its layers); and no AWS SDK bundled: boto3, botocore and s3transfer come with the
Lambda Python runtime, so a copy in the build (found as a top-level package or module) only adds
size. The figure names the distribution that pulled it in, and what the layer holds only for it
(the SDK and the requirements nothing else needs, extras included), with their size.

Results go to ``bench/results/package_size.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from bench import LAYER, RESULTS
from bench.common import figure, figure_rows, table, write_result
from local.template import Ref, Template

NAME = "package_size"
PROJECT_ROOT = LAYER.parent.parent
TEMPLATE = PROJECT_ROOT / "template.yaml"
SAMCONFIG = PROJECT_ROOT / "samconfig.toml"
SAM = PROJECT_ROOT / ".tools" / "sam" / "bin" / "sam"
SAM_INSTALL_HINT = "make .tools/sam/.installed"
BUILD_TIMEOUT_SECONDS = 600

MIB = 1024 * 1024
KIB = 1024
ZIPPED_LIMIT_BYTES = 50 * MIB  # 52,428,800: a direct upload (the Lambda API, the console)
UNZIPPED_LIMIT_BYTES = 250 * MIB  # 262,144,000: a function and all its layers, unzipped
# What the Lambda Python runtime provides: a bundled copy is dead weight.
RUNTIME_SDK = ("boto3", "botocore", "s3transfer")
LAYER_TOP = 8  # distributions listed in the layer's detail

QUICK_ARGS: list[str] = []  # the full run is one build, about 10 s: nothing to shrink


@dataclass
class Zipped:
    """A directory zipped as SAM zips it: archive bytes, files' bytes, file count."""

    zipped: int = 0
    unzipped: int = 0
    files: int = 0


@dataclass
class Part:
    """Files of one distribution (or one unlisted top-level name) within a directory."""

    name: str
    top_level: set[str] = field(default_factory=set)
    zipped: int = 0
    unzipped: int = 0
    files: int = 0


# -- building --------------------------------------------------------------------------------------


def sam_environment() -> dict[str, str]:
    """SAM's environment: no telemetry, and the project's Python (3.13, the runtime's) first on PATH."""
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sam_build(build_dir: Path, work_dir: Path) -> float:
    """``sam build`` of the project into ``build_dir``; the seconds it took."""
    if not SAM.exists():
        raise SystemExit(f"the SAM CLI is not installed at {SAM}: run `{SAM_INSTALL_HINT}`")
    env = sam_environment()
    if shutil.which("python3.13", path=env["PATH"]) is None:
        raise SystemExit(
            "sam build for the python3.13 runtime needs python3.13 on PATH (the project's .venv)"
        )
    command = [
        str(SAM),
        "build",
        "--template-file",
        str(TEMPLATE),
        "--config-file",
        str(SAMCONFIG),
        "--build-dir",
        str(build_dir),
        "--cache-dir",
        str(work_dir / "cache"),
    ]
    started = time.monotonic()
    # From a scratch directory: SAM writes its dependency cache (.aws-sam/deps) where it runs.
    done = subprocess.run(
        command,
        cwd=work_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise SystemExit(f"sam build failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.monotonic() - started


# -- measuring -------------------------------------------------------------------------------------


def files_under(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``root`` with its path in the archive, in a stable order (symlinks followed,
    as SAM's zip does)."""
    for directory, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            yield path, path.relative_to(root).as_posix()


def zip_directory(root: Path) -> tuple[Zipped, dict[str, int]]:
    """``root`` zipped in memory as SAM packages a code directory; also each entry's compressed size."""
    buffer = io.BytesIO()
    result = Zipped()
    compressed: dict[str, int] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in files_under(root):
            archive.write(path, name)
            info = archive.getinfo(name)
            compressed[name] = info.compress_size
            result.unzipped += info.file_size
            result.files += 1
    result.zipped = buffer.getbuffer().nbytes
    return result, compressed


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def distributions(site: Path, *, extras: bool = False) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Under a ``site-packages``-like directory: file (relative path) -> distribution name, and each
    distribution's requirements (``Requires-Dist``, names only; those of extras too with ``extras``)."""
    owner: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    for dist_info in sorted(site.glob("*.dist-info")):
        metadata_file = dist_info / "METADATA"
        if metadata_file.is_file():
            metadata = HeaderParser().parsestr(metadata_file.read_text(encoding="utf-8", errors="replace"))
            name = str(metadata.get("Name") or dist_info.name.split("-")[0])
            requires[name] = [
                _requirement_name(line)
                for line in metadata.get_all("Requires-Dist") or []
                if extras or "extra ==" not in line
            ]
        else:
            name = dist_info.name.split("-")[0]
        record = dist_info / "RECORD"
        if record.is_file():
            for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
                listed = line.rsplit(",", 2)[0].strip('"')
                if listed and not listed.startswith(".."):
                    owner[Path(listed).as_posix()] = name
        # The metadata directory itself counts to its distribution, listed or not.
        for path in dist_info.rglob("*"):
            if path.is_file():
                owner[path.relative_to(site).as_posix()] = name
    return owner, requires


def _requirement_name(line: str) -> str:
    name = line.strip()
    for stop in (" ", ";", "<", ">", "=", "!", "~", "[", "("):
        name = name.split(stop, 1)[0]
    return name


def split_by_distribution(site: Path, compressed: Mapping[str, int], prefix: str) -> list[Part]:
    """The layer's files grouped by distribution, largest (unzipped) first."""
    owner, _ = distributions(site)
    parts: dict[str, Part] = {}
    for path, name in files_under(site):
        relative = path.relative_to(site).as_posix()
        top = relative.split("/", 1)[0]
        distribution = owner.get(relative) or (top[:-3] if top.endswith(".py") else top)
        part = parts.setdefault(distribution, Part(distribution))
        if not top.endswith((".dist-info", ".data")):
            part.top_level.add(top[:-3] if top.endswith(".py") else top)
        part.unzipped += path.stat().st_size
        part.zipped += compressed.get(f"{prefix}{name}", 0)
        part.files += 1
    return sorted(parts.values(), key=lambda p: p.unzipped, reverse=True)


def sdk_copies(build_dir: Path, names: Sequence[str]) -> list[tuple[str, Path]]:
    """Every top-level package or module named like the runtime's SDK in the built directories."""
    found = []
    for code_dir in sorted(p for p in build_dir.iterdir() if p.is_dir()):
        for site in (code_dir, code_dir / "python"):
            for name in names:
                for candidate in (site / name, site / f"{name}.py"):
                    if candidate.exists():
                        found.append((name, candidate))
    return found


def required_by(site: Path, wanted: str) -> list[str]:
    """Distributions in ``site`` that require ``wanted`` (directly)."""
    _, requires = distributions(site)
    return sorted(name for name, needs in requires.items() if _normal(wanted) in {_normal(n) for n in needs})


def only_for(site: Path, unwanted: Sequence[str]) -> list[str]:
    """The distributions in ``site`` that are there only because of ``unwanted`` ones: those
    themselves, and what nothing else needs (requirements followed from the distributions nothing
    requires, extras' included since pip installed them, without passing through ``unwanted``)."""
    _, requires = distributions(site, extras=True)
    present = {_normal(name): name for name in requires}
    needs = {_normal(name): {_normal(n) for n in wanted} & set(present) for name, wanted in requires.items()}
    banned = {_normal(name) for name in unwanted} & set(present)
    required = {n for wanted in needs.values() for n in wanted}
    kept: set[str] = set()
    pending = [name for name in present if name not in required and name not in banned]
    while pending:
        name = pending.pop()
        if name not in kept:
            kept.add(name)
            pending.extend(n for n in needs[name] if n not in banned)
    return sorted(present[name] for name in set(present) - kept)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p, _ in files_under(path)) if path.is_dir() else path.stat().st_size


@dataclass
class Measured:
    functions: dict[str, Zipped]
    layers: dict[str, Zipped]
    layer_parts: dict[str, list[Part]]
    function_layers: dict[str, list[str]]
    sdk: list[dict[str, Any]]
    sdk_only: dict[str, list[Part]]  # layer -> the distributions there only for a bundled SDK
    build_seconds: float | None


def measure(build_dir: Path, template: Template, build_seconds: float | None) -> Measured:
    functions: dict[str, Zipped] = {}
    for logical_id in template.functions:
        code_dir = build_dir / logical_id
        if not code_dir.is_dir():
            raise SystemExit(f"{code_dir} is missing: is {build_dir} a build of {template.path}?")
        functions[logical_id], _ = zip_directory(code_dir)
    layers: dict[str, Zipped] = {}
    layer_parts: dict[str, list[Part]] = {}
    for logical_id in template.layers:
        layer_dir = build_dir / logical_id
        if not layer_dir.is_dir():
            raise SystemExit(f"{layer_dir} is missing: is {build_dir} a build of {template.path}?")
        layers[logical_id], compressed = zip_directory(layer_dir)
        site = layer_dir / "python"
        if site.is_dir():
            layer_parts[logical_id] = split_by_distribution(site, compressed, "python/")
    # The layers the template builds that each function uses (``!Ref <Layer>``); others are not ours.
    function_layers = {
        logical_id: [
            layer.name for layer in spec.layers if isinstance(layer, Ref) and layer.name in template.layers
        ]
        for logical_id, spec in template.functions.items()
    }
    sdk: list[dict[str, Any]] = []
    for name, path in sdk_copies(build_dir, RUNTIME_SDK):
        site = path.parent
        sdk.append(
            {
                "package": name,
                "where": path.relative_to(build_dir).as_posix(),
                "unzipped_bytes": directory_bytes(path),
                "required_by": required_by(site, name),
            }
        )
    sdk_only: dict[str, list[Part]] = {}
    for logical_id, parts in layer_parts.items():
        site = build_dir / logical_id / "python"
        if any(item["where"].startswith(f"{logical_id}/") for item in sdk):
            names = {_normal(name) for name in only_for(site, RUNTIME_SDK)}
            sdk_only[logical_id] = [part for part in parts if _normal(part.name) in names]
    return Measured(functions, layers, layer_parts, function_layers, sdk, sdk_only, build_seconds)


# -- the report ------------------------------------------------------------------------------------


def _kib(size: int) -> float:
    return round(size / KIB, 1)


def _mib(size: int) -> float:
    return round(size / MIB, 2)


def report(args: argparse.Namespace, measured: Measured) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # What a function ships with: its zip and every layer of this template it uses (the gRPC layer
    # only for the functions that talk to schedulers).
    zipped_totals = {
        logical_id: zipped.zipped
        + sum(measured.layers[n].zipped for n in measured.function_layers[logical_id])
        for logical_id, zipped in measured.functions.items()
    }
    totals = {
        logical_id: zipped.unzipped
        + sum(measured.layers[n].unzipped for n in measured.function_layers[logical_id])
        for logical_id, zipped in measured.functions.items()
    }
    for logical_id, zipped in measured.functions.items():
        layers = ", ".join(measured.function_layers[logical_id]) or "no layer"
        figures[f"{logical_id}_zipped"] = figure(
            _kib(zipped.zipped),
            ZIPPED_LIMIT_BYTES // KIB,
            "at most",
            "KiB",
            label=f"{logical_id} zipped",
            detail=f"{_kib(zipped.unzipped)} KiB unzipped, {zipped.files} files; with {layers}: "
            f"{_mib(zipped_totals[logical_id])} MiB zipped, {_mib(totals[logical_id])} MiB unzipped",
        )
    for logical_id, zipped in measured.layers.items():
        parts = measured.layer_parts.get(logical_id, [])
        top = ", ".join(f"{p.name} {_mib(p.unzipped)}" for p in parts[:4])
        figures[f"{logical_id}_zipped"] = figure(
            _mib(zipped.zipped),
            ZIPPED_LIMIT_BYTES // MIB,
            "at most",
            "MiB",
            label=f"{logical_id} (layer) zipped",
            detail=f"{_mib(zipped.unzipped)} MiB unzipped, {zipped.files} files; largest (MiB): {top}",
        )
    largest = max(totals, key=lambda logical_id: totals[logical_id])
    figures["largest_unzipped"] = figure(
        _mib(totals[largest]),
        UNZIPPED_LIMIT_BYTES // MIB,
        "below",
        "MiB",
        label="largest function + its layers, unzipped",
        detail=f"{largest} ({_kib(measured.functions[largest].unzipped)} KiB) + "
        + (", ".join(measured.function_layers[largest]) or "no layer"),
    )
    bundled = sorted({item["package"] for item in measured.sdk})
    found = [
        f"{item['where']} ({_mib(item['unzipped_bytes'])} MiB) "
        f"required by {', '.join(item['required_by']) or '?'}"
        for item in measured.sdk
    ]
    for logical_id, parts in measured.sdk_only.items():
        only_zipped, only_unzipped = sum(p.zipped for p in parts), sum(p.unzipped for p in parts)
        found.append(
            f"{logical_id} holds {', '.join(p.name for p in parts)} only for it: "
            f"{_mib(only_zipped)} MiB of its zip, {_mib(only_unzipped)} MiB unzipped"
        )
    figures["sdk_bundled"] = figure(
        len(bundled),
        0,
        "exactly",
        "packages",
        label="AWS SDK packages bundled (boto3, botocore, s3transfer)",
        detail="; ".join(found) or "none: the runtime's are used",
    )
    return {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.package_size", *args.argv]),
        "setup": {
            "build": "sam build (flags of samconfig.toml) into a temporary directory"
            if args.build_dir is None
            else f"an existing build: {args.build_dir}",
            "build_seconds": None if measured.build_seconds is None else round(measured.build_seconds, 1),
            "zip": "every file, ZIP_DEFLATED at zlib's default level, as sam package zips a code directory",
            "limits": {"zipped_bytes": ZIPPED_LIMIT_BYTES, "unzipped_bytes": UNZIPPED_LIMIT_BYTES},
        },
        "functions": {
            logical_id: {
                "zipped_bytes": zipped.zipped,
                "unzipped_bytes": zipped.unzipped,
                "files": zipped.files,
                "layers": measured.function_layers[logical_id],
                "with_layers_zipped_bytes": zipped_totals[logical_id],
                "with_layers_unzipped_bytes": totals[logical_id],
            }
            for logical_id, zipped in measured.functions.items()
        },
        "layers": {
            logical_id: {
                "zipped_bytes": zipped.zipped,
                "unzipped_bytes": zipped.unzipped,
                "files": zipped.files,
                "distributions": [
                    {
                        "name": part.name,
                        "top_level": sorted(part.top_level),
                        "zipped_bytes": part.zipped,
                        "unzipped_bytes": part.unzipped,
                        "files": part.files,
                        "share_of_unzipped": round(part.unzipped / zipped.unzipped, 3)
                        if zipped.unzipped
                        else 0,
                    }
                    for part in measured.layer_parts.get(logical_id, [])
                ],
            }
            for logical_id, zipped in measured.layers.items()
        },
        "sdk_bundled": measured.sdk,
        "only_for_the_sdk": {
            logical_id: {
                "distributions": [part.name for part in parts],
                "zipped_bytes": sum(part.zipped for part in parts),
                "unzipped_bytes": sum(part.unzipped for part in parts),
            }
            for logical_id, parts in measured.sdk_only.items()
        },
        "figures": figures,
    }


def render(result: Mapping[str, Any]) -> str:
    lines = [f"package size: {result['setup']['build']}"]
    for logical_id, layer in result["layers"].items():
        lines.append(f"{logical_id}, by distribution (largest first):")
        lines.append(f"  {'distribution':<28} {'unzipped':>12} {'zipped':>12}  share  top-level names")
        for part in layer["distributions"][:LAYER_TOP]:
            unzipped, zipped = part["unzipped_bytes"] / MIB, part["zipped_bytes"] / MIB
            lines.append(
                f"  {part['name']:<28} {unzipped:>8.2f} MiB {zipped:>8.2f} MiB"
                f"  {part['share_of_unzipped']:>5.0%}  {', '.join(part['top_level'])}"
            )
    lines.append("")
    lines.append(table(figure_rows(result["figures"])))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = argparse.ArgumentParser(prog="python -m bench.package_size", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--build-dir", type=Path, default=None, help="measure this existing sam build instead of building"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    template = Template.load(TEMPLATE)
    if args.build_dir is not None:
        measured = measure(args.build_dir, template, None)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-package-size-") as scratch:
            work_dir = Path(scratch)
            build_dir = work_dir / "build"
            seconds = sam_build(build_dir, work_dir)
            measured = measure(build_dir, template, seconds)
    result = report(args, measured)
    write_result(args.output, result)
    print(render(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
