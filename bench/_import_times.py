"""Where a fresh process's import time goes: ``python -X importtime`` output read as trees, and
what a function imports beyond its floor (used by ``bench.cold_start`` to diagnose a slow one)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")
PROJECT_MODULES = re.compile(r"^(app|preheat)(\.|$)")


@dataclass
class ImportNode:
    name: str
    own_us: int
    children: list[ImportNode]


def import_tree(stderr: str) -> list[ImportNode]:
    """``-X importtime`` output (children are printed before their parent, indented one level
    deeper) as the trees of the modules imported at the top."""
    pending: dict[int, list[ImportNode]] = defaultdict(list)
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            depth = len(match.group(3)) // 2
            node = ImportNode(match.group(4), int(match.group(1)), pending.pop(depth + 1, []))
            pending[depth].append(node)
    return pending.get(0, [])


def _names(nodes: Sequence[ImportNode]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        names.add(node.name)
        names |= _names(node.children)
    return names


def heavy_imports(function_stderr: str, floor_stderr: str, top: int = 8) -> dict[str, Any]:
    """What the function imports beyond its floor, by where the project's code reaches outside
    itself: each third-party module it imports (directly, or under one it imports) that the floor
    does not, with the import time of all it brings that the floor does not; and the project's
    own modules' time."""
    floor = _names(import_tree(floor_stderr))
    entries: list[tuple[str, str, int]] = []
    project_us = 0

    def beyond_floor(node: ImportNode) -> int:
        return node.own_us + sum(beyond_floor(child) for child in node.children if child.name not in floor)

    def visit(node: ImportNode, parent: str) -> None:
        nonlocal project_us
        if PROJECT_MODULES.match(node.name):
            project_us += node.own_us
            for child in node.children:
                visit(child, node.name)
        elif node.name not in floor:
            entries.append((node.name, parent, beyond_floor(node)))

    for root in import_tree(function_stderr):
        visit(root, "app")
    entries.sort(key=lambda entry: -entry[2])
    return {
        "beyond_floor_ms": round((project_us + sum(us for _, _, us in entries)) / 1000, 1),
        "project_modules_ms": round(project_us / 1000, 1),
        "third_party_ms": {
            f"{name} (from {parent})": round(us / 1000, 1) for name, parent, us in entries[:top]
        },
    }
