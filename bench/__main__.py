"""Every benchmark, then one table of every figure beside its target: ``python -m bench`` (``make bench``).

    .venv/bin/python -m bench [--quick] [--only NAME,...] [--skip NAME,...] [--list] [--verbose]

Each benchmark (a module of this package with ``main(argv) -> int``) runs in turn with its default
sizes, or with the smaller ones it names in ``QUICK_ARGS`` under ``--quick``, and writes its own
``bench/results/<name>.json``. Their tables are kept quiet (``--verbose`` shows them); what is
printed is one combined table, also written as ``bench/results/summary.json`` (every figure
``{value, target, met, ...}`` by benchmark, with the date, the machine and the time each took);
``--markdown`` prints the table in Markdown, for the README.

The exit status is 1 when a benchmark could not run (its error is in the summary), or, with
``--strict``, when a target is missed; 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import pkgutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bench
from bench import RESULTS
from bench.common import GOALS, machine, machine_line, now_iso, shown, target_text, write_result

# In this order; other benchmark modules found in the package run after them, by name.
ORDER = (
    "registry_resolve",
    "completion_notice",
    "completion_notice_scheduler",
    "scheduler_calls",
    "node_hits",
    "latency",
    "aws_calls",
    "cold_start",
    "worker_memory",
    "throughput",
    "package_size",
)
NOT_BENCHMARKS = frozenset({"common"})
# --quick sizes for the benchmarks that do not name their own (QUICK_ARGS).
QUICK_DEFAULTS: dict[str, list[str]] = {
    "registry_resolve": ["--runs", "2"],
}


def discover() -> list[str]:
    found = {
        module.name
        for module in pkgutil.iter_modules(bench.__path__)
        if not module.name.startswith("_") and module.name not in NOT_BENCHMARKS
    }
    return [name for name in ORDER if name in found] + sorted(found - set(ORDER))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run_one(name: str, quick: bool, results: Path, verbose: bool) -> dict[str, Any]:
    """Run one benchmark in this process; what it wrote, how long it took, or why it failed."""
    output = results / f"{name}.json"
    started = time.monotonic()
    captured = io.StringIO()
    entry: dict[str, Any] = {"result": str(output)}
    try:
        module = importlib.import_module(f"bench.{name}")
        argv = list(getattr(module, "QUICK_ARGS", QUICK_DEFAULTS.get(name, []))) if quick else []
        entry["argv"] = argv
        with contextlib.redirect_stdout(sys.stdout if verbose else captured):
            code = module.main([*argv, "--output", str(output)])
        if code not in (0, None):
            raise RuntimeError(f"exited {code}")
        written: dict[str, Any] = bench_result(output)
        entry["figures"] = written["figures"]
    except (Exception, SystemExit) as exc:  # one benchmark failing must not lose the others' figures
        entry["error"] = f"{type(exc).__name__}: {exc}"
        tail = captured.getvalue()[-2000:]
        print(f"{name} failed: {entry['error']}\n{tail}{traceback.format_exc()}", file=sys.stderr)
    entry["seconds"] = round(time.monotonic() - started, 1)
    return entry


def bench_result(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    if not isinstance(result.get("figures"), dict):
        raise RuntimeError(f"{path} holds no figures")
    return result


def rows_of(benchmarks: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for name, entry in benchmarks.items():
        if "error" in entry:
            rows.append((name, "(did not run)", "", "", "NO", entry["error"][:120]))
            continue
        for key, item in entry["figures"].items():
            rows.append(
                (
                    name,
                    str(item.get("label") or key),
                    shown(item["value"], str(item.get("unit", ""))),
                    target_text(item) if item.get("goal") in GOALS else shown(item["target"]),
                    "yes" if item["met"] else "NO",
                    str(item.get("detail", "")),
                )
            )
    return rows


def text_table(rows: Sequence[tuple[str, ...]]) -> str:
    header = ("benchmark", "figure", "value", "target", "met", "detail")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    lines = []
    for row in [header, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4].ljust(widths[4]),
            row[5],
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def markdown_table(rows: Sequence[tuple[str, ...]]) -> str:
    lines = [
        "| benchmark | figure | value | target | met | detail |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (each benchmark's QUICK_ARGS)")
    parser.add_argument("--only", type=_names, default=[], help="comma-separated benchmarks to run")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated benchmarks to leave out")
    parser.add_argument("--list", action="store_true", help="name the benchmarks and stop")
    parser.add_argument("--verbose", action="store_true", help="show each benchmark's own table too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (for the README)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (bench/results)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = sorted(set(args.only + args.skip) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (there are: {', '.join(available)})")
    chosen = [name for name in available if (not args.only or name in args.only) and name not in args.skip]

    started_at, started = now_iso(), time.monotonic()
    benchmarks: dict[str, dict[str, Any]] = {}
    for name in chosen:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        benchmarks[name] = run_one(name, args.quick, args.results, args.verbose)
        print(f"  {name}: {benchmarks[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    seconds = round(time.monotonic() - started, 1)

    info = machine()
    figures = [item for entry in benchmarks.values() for item in entry.get("figures", {}).values()]
    failed = [name for name, entry in benchmarks.items() if "error" in entry]
    met = sum(bool(item["met"]) for item in figures)
    command = " ".join(["python -m bench", *argv])
    summary = {
        "date": started_at,
        "machine": info,
        "command": command,
        "quick": args.quick,
        "seconds": seconds,
        "figures_met": met,
        "figures_total": len(figures),
        "all_met": met == len(figures) and not failed,
        "failed": failed,
        "benchmarks": benchmarks,
    }
    write_result(args.results / "summary.json", summary)
    rows = rows_of(benchmarks)
    print(f"{started_at} on {machine_line(info)}; `{command}` took {seconds:.0f} s\n")
    print(markdown_table(rows) if args.markdown else text_table(rows))
    print(
        f"\n{met} of {len(figures)} targets met" + (f"; did not run: {', '.join(failed)}" if failed else "")
    )
    print(f"written to {args.results / 'summary.json'}")
    if failed:
        return 1
    return 1 if args.strict and met < len(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
