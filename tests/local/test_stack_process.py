"""``python -m local.stack`` as ``make run`` starts it: comes up on free ports, stops cleanly on a signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from local.aws import client
from tests.local.support import wait_for

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StackProcess:
    process: subprocess.Popen[bytes]
    local_dir: Path
    state: dict[str, Any]

    @property
    def stdout(self) -> str:
        return (self.local_dir / "stdout.log").read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return (self.local_dir / "stderr.log").read_text(encoding="utf-8", errors="replace")


def _environment(local_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREHEAT_", "AWS_"))}
    env.update(
        PREHEAT_API_PORT="0",
        PREHEAT_MOTO_PORT="0",
        PREHEAT_SUPERNODE_PORT="0",
        PREHEAT_LOCAL_DIR=str(local_dir),
    )
    return env


def _group_members(group: int) -> list[int]:
    """Live processes in a process group (the stack runs in a session of its own)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def stack_process(tmp_path: Path) -> Iterator[StackProcess]:
    with (tmp_path / "stdout.log").open("wb") as out, (tmp_path / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=PROJECT_ROOT,
            env=_environment(tmp_path),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    state_file = tmp_path / "stack.json"
    running = StackProcess(process, tmp_path, {})
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the stack exited with {process.returncode}:\n{running.stderr}")
            return state_file.is_file() and "curl" in running.stdout

        wait_for(ready, timeout=30, interval=0.1)
        running.state = json.loads(state_file.read_text(encoding="utf-8"))
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_it_comes_up_on_localhost_and_joins_invoke(stack_process: StackProcess) -> None:
    state = stack_process.state
    for key in ("api_url", "moto_url", "reference_supernode"):
        assert state[key].startswith("http://127.0.0.1:"), key
    assert f"Preheat API: {state['api_url']}" in stack_process.stdout
    assert f"curl -s -XPOST {state['api_url']}/api/preheat -d '" in stack_process.stdout
    assert state["supernodes"] == [state["reference_supernode"]]
    assert state["environment"]["PREHEAT_INSECURE_REGISTRIES"] == "localhost,127.0.0.1"

    queues = client("sqs", state["moto_url"]).list_queues()["QueueUrls"]
    assert state["resources"]["PreheatQueue"]["ref"] in queues
    ping = requests.get(f"{state['reference_supernode']}/_ping", timeout=5)
    assert ping.status_code == 200

    check = requests.get(f"{state['api_url']}/api/check", timeout=10)
    assert (check.status_code, check.json()) == (200, {"code": 200})

    # `make invoke` joins the running stack through its stack.json ...
    assert _invoke_check(_environment(stack_process.local_dir)) == {"code": 200}
    # ... or, without one, through AWS_ENDPOINT_URL (resources found by name; parameters from the shell).
    without_state = _environment(stack_process.local_dir / "elsewhere")
    without_state.update(AWS_ENDPOINT_URL=state["moto_url"], PREHEAT_SUPERNODES=state["reference_supernode"])
    assert _invoke_check(without_state) == {"code": 200}


def _invoke_check(env: dict[str, str]) -> Any:
    invoked = subprocess.run(
        [sys.executable, "-m", "local.invoke", "CheckFunction", "events/check.json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert invoked.returncode == 0, invoked.stderr.decode()
    result = json.loads(invoked.stdout)  # stdout holds the result only; the handler logs to stderr
    assert result["statusCode"] == 200
    return json.loads(result["body"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_everything_and_exits_0(stack_process: StackProcess, signum: signal.Signals) -> None:
    process = stack_process.process
    process.send_signal(signum)
    assert process.wait(timeout=30) == 0, stack_process.stderr
    assert not (stack_process.local_dir / "stack.json").exists()
    assert _group_members(process.pid) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack_process.state['api_url']}/api/check", timeout=2)


def test_a_port_in_use_fails_fast_with_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = _environment(tmp_path)
        env["PREHEAT_MOTO_PORT"] = str(taken.getsockname()[1])
        finished = subprocess.run(
            [sys.executable, "-m", "local.stack"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
            start_new_session=True,
        )
    assert finished.returncode == 1
    assert b"could not start" in finished.stderr
    assert not (tmp_path / "stack.json").exists()
