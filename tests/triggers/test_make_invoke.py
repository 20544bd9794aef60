"""``make invoke FUNCTION=<logical id> EVENT=events/<file>.json`` (``python -m local.invoke``) against a
running ``python -m local.stack``, for every sample event; and the stack's local schedules switch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.handlers.test_sample_events import EVENTS, target_function
from tests.local.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEDULED = [{"type": "file", "url": "http://127.0.0.1:9/nightly.bin"}]


def environment(local_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREHEAT_", "AWS_", "POWERTOOLS_"))}
    env.update(
        PREHEAT_API_PORT="0",
        PREHEAT_MOTO_PORT="0",
        PREHEAT_SUPERNODE_PORT="0",
        PREHEAT_DEMO_REGISTRY="0",
        PREHEAT_LOCAL_DIR=str(local_dir),
    )
    return env


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running ``python -m local.stack`` (schedules on), by its PREHEAT_LOCAL_DIR."""
    local_dir = tmp_path_factory.mktemp("stack")
    env = environment(local_dir)
    env.update(
        PREHEAT_LOCAL_SCHEDULES="1",
        PREHEAT_LOCAL_PARAMETERS=json.dumps(
            {"ScheduledPreheats": SCHEDULED, "PreheatSchedule": "rate(1 hour)"}
        ),
    )
    with (local_dir / "stdout.log").open("wb") as out, (local_dir / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                stderr = (local_dir / "stderr.log").read_text(errors="replace")
                raise AssertionError(f"the stack exited with {process.returncode}:\n{stderr}")
            return (local_dir / "stack.json").is_file() and "curl" in (local_dir / "stdout.log").read_text()

        wait_for(ready, timeout=30, interval=0.1)
        yield local_dir
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def invoke(local_dir: Path, function: str, event_file: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "local.invoke", function, str(event_file.relative_to(ROOT))],
        cwd=ROOT,
        env=environment(local_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_make_invoke_handles_every_sample_event_against_the_running_stack(local_dir: Path):
    targets = {path: target_function(json.loads(path.read_text())) for path in EVENTS}
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(targets, pool.map(lambda p: invoke(local_dir, targets[p], p), targets), strict=True))
    results: dict[str, Any] = {}
    for path, (code, stdout, stderr) in runs.items():
        assert code == 0, f"{path.name} -> {targets[path]}: exit {code}\n{stdout}\n{stderr}"
        result = results[path.name] = json.loads(stdout)  # the result alone: logs went to stderr
        if targets[path] == "ScheduledPreheatFunction":
            assert (result["rejected"], result["failed"]) == ([], []), result
            assert result["taskIds"], result
        elif targets[path] in ("WorkerFunction", "DeadLetterFunction"):
            assert result == {"batchItemFailures": []}, result
        elif targets[path] == "ApiKeyAuthorizerFunction":
            assert result["usageIdentifierKey"], result
        elif targets[path] == "SweeperFunction":
            assert result["complete"] is True, result  # the stack's tasks are younger than their deadline
            assert (result["ended"], result["handedToWorker"]) == ([], []), result
        elif targets[path] == "GateFunction":
            # The gate answers in HTTP status (rollout tools read it): the sample's task is unknown here.
            assert result["statusCode"] == 404, result
        elif targets[path].startswith("Harbor"):
            # Harbor's APIs answer real status codes: 201 for a create, 404 for the samples' unknown ids.
            assert result["statusCode"] in (200, 201, 404), result
        else:
            assert result["statusCode"] == 200, result
    assert len(results["scheduled-preheats.json"]["taskIds"]) == 2
    assert json.loads(results["preheat-image.json"]["body"])["code"] == 200
    assert json.loads(results["preheat-invalid.json"]["body"])["code"] == 400
    assert json.loads(results["check.json"]["body"]) == {"code": 200}


def test_the_stack_lists_its_local_schedules(local_dir: Path):
    state = json.loads((local_dir / "stack.json").read_text())
    assert state["schedules"] == {
        "SweeperFunctionSweep": "SweeperFunctionSweep: rate(5 minutes) -> SweeperFunction",
        "ScheduledPreheatsSchedule": "ScheduledPreheatsSchedule: rate(1 hour) -> ScheduledPreheatFunction",
    }
    banner = (local_dir / "stdout.log").read_text()
    assert "Schedule ScheduledPreheatsSchedule: rate(1 hour) -> ScheduledPreheatFunction (next 20" in banner


def test_an_unknown_function_is_refused_with_exit_2(local_dir: Path):
    code, _, stderr = invoke(local_dir, "NoSuchFunction", EVENTS[0])
    assert code == 2
    assert "ScheduledPreheatFunction" in stderr  # the message lists the template's functions


def test_make_invoke_is_python_m_local_invoke():
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "invoke", "FUNCTION=ScheduledPreheatFunction", "EVENT=events/ecr-push.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ".venv/bin/python -m local.invoke ScheduledPreheatFunction events/ecr-push.json" in dry.stdout
