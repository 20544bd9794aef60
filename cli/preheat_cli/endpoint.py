"""Which API the command talks to when ``--endpoint`` is not given.

``PREHEAT_ENDPOINT`` first; then the local stack that ``make run`` started, found through the
``.local/stack.json`` it writes (its API port may have been chosen with ``PREHEAT_API_PORT``); then
the local stack's default address. A running local stack also names its completion events file,
which ``--wait`` follows (see ``preheat_cli.waiting``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

ENDPOINT_VARIABLE = "PREHEAT_ENDPOINT"
API_KEY_VARIABLE = "PREHEAT_API_KEY"
LOCAL_DIR_VARIABLE = "PREHEAT_LOCAL_DIR"
DEFAULT_ENDPOINT = "http://127.0.0.1:3000"
STATE_FILE_NAME = "stack.json"


def default_endpoint(environ: Mapping[str, str], cwd: Path) -> str:
    explicit = environ.get(ENDPOINT_VARIABLE, "").strip()
    if explicit:
        return explicit
    return running_local_stack(environ, cwd) or DEFAULT_ENDPOINT


def running_local_stack(environ: Mapping[str, str], cwd: Path) -> str | None:
    """The API URL of a running local stack, or None."""
    state = _running_state(environ, cwd)
    return None if state is None else str(state["api_url"])


def local_events_file(endpoint: str, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The completion events file of the running local stack whose API is ``endpoint`` (its bus's
    rule appends every event there), or None: any other endpoint's events are on an EventBridge bus
    no API client reads."""
    state = _running_state(environ, cwd)
    if state is None or str(state["api_url"]).rstrip("/") != endpoint.rstrip("/"):
        return None
    events = state.get("events_file")
    return Path(events) if isinstance(events, str) and events else None


def _running_state(environ: Mapping[str, str], cwd: Path) -> dict[str, object] | None:
    """What the running local stack's ``stack.json`` holds, or None."""
    for path in _state_files(environ, cwd):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict):
            continue
        url = state.get("api_url")
        if isinstance(url, str) and url and _alive(state.get("pid")):
            return state
    return None


def _state_files(environ: Mapping[str, str], cwd: Path) -> Iterator[Path]:
    local_dir = environ.get(LOCAL_DIR_VARIABLE, "").strip()
    if local_dir:
        # Relative the way the stack took it: to the directory it was started from, which `make run`
        # makes the project root, so only a guess when the command runs elsewhere.
        yield (cwd / local_dir) / STATE_FILE_NAME
    # The project root may be any parent: the command is often run from a subdirectory.
    for directory in (cwd, *cwd.parents):
        yield directory / ".local" / STATE_FILE_NAME


def _alive(pid: object) -> bool:
    """False only when the stack's process is surely gone: a stack killed with SIGKILL leaves its
    ``stack.json`` behind, and its port may since belong to something else."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    if os.name != "posix":
        return True  # on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True
