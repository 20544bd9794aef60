"""``python -m local.stack`` as ``make run`` starts it: comes up on free ports (the demo registry too),
stops cleanly on a signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from local.aws import client
from local.oci_layout import OCI_MANIFEST
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY
from tests.local.support import wait_for
from tests.support.fixtures import require_tools

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
        # The demo registry on a free port too (where its tools are installed): never 5001 in tests.
        PREHEAT_DEMO_REGISTRY_PORT="0",
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


def _registry_processes(local_dir: Path) -> list[int]:
    """Live docker-registry processes whose config is under ``local_dir``, in any process group."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        program = command.split(b"\0", 1)[0]
        if state != "Z" and program.endswith(REGISTRY_BINARY.encode()) and str(local_dir).encode() in command:
            found.append(int(proc.name))
    return found


@pytest.fixture
def stack_process(tmp_path: Path) -> Iterator[StackProcess]:
    with _run_stack(tmp_path, _environment(tmp_path)) as running:
        yield running


@contextmanager
def _run_stack(tmp_path: Path, env: dict[str, str]) -> Iterator[StackProcess]:
    with (tmp_path / "stdout.log").open("wb") as out, (tmp_path / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=PROJECT_ROOT,
            env=env,
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
    assert f"Console: {state['api_url']}/console" in stack_process.stdout
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


def test_it_serves_the_demo_image_and_stops_the_registry_with_it(stack_process: StackProcess) -> None:
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    state, local_dir = stack_process.state, stack_process.local_dir
    registry = state["demo_registry"]
    image = state["demo_image"]
    assert registry.startswith("127.0.0.1:")
    assert not registry.endswith(":5001")  # PREHEAT_DEMO_REGISTRY_PORT=0 picked a free port
    assert image == f"{registry}/demo/app:v1"
    assert f"Demo image: {image}" in stack_process.stdout
    body = json.dumps({"type": "image", "url": image}, separators=(",", ":"))
    assert f"curl -s -XPOST {state['api_url']}/api/preheat -d '{body}'" in stack_process.stdout
    assert f"curl -s {state['api_url']}/api/preheat/<taskId>" in stack_process.stdout
    manifest = requests.get(
        f"http://{registry}/v2/demo/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=5
    )
    assert manifest.status_code == 200
    assert (local_dir / "registry" / "data").is_dir()  # PREHEAT_LOCAL_DIR/registry
    registry_pids = _registry_processes(local_dir)
    assert len(registry_pids) == 1

    process = stack_process.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, stack_process.stderr
    assert _registry_processes(local_dir) == []
    assert _group_members(process.pid) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{registry}/v2/", timeout=2)


def test_without_the_registry_tools_it_says_how_to_install_them_and_carries_on(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    (tmp_path / "empty-bin").mkdir()
    env["PATH"] = str(tmp_path / "empty-bin")  # neither docker-registry nor skopeo to be found
    with _run_stack(tmp_path, env) as running:
        assert running.state["demo_registry"] is None
        assert running.state["demo_image"] is None
        hints = [line for line in running.stderr.splitlines() if "docker-registry" in line]
        assert len(hints) == 1, running.stderr
        assert "apt-get install docker-registry skopeo" in hints[0]
        assert "Demo image" not in running.stdout
        check = requests.get(f"{running.state['api_url']}/api/check", timeout=10)
        assert (check.status_code, check.json()) == (200, {"code": 200})

        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=30) == 0, running.stderr
