"""The ``preheat`` command against the local stack and a real registry: exit codes, JSON mode, and the
progress bar reaching 100%.

The command runs both as a subprocess (``python -m preheat_cli``, as a user runs it) and in-process
through ``main([...])`` with pytest capturing its output (stdout is then not a terminal: plain lines).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.stack import LocalStack
from preheat_cli.client import PreheatClient
from preheat_cli.main import main
from preheat_cli.waiting import EVENT_LOOK_SECONDS, EventsFile, wait_for_task
from tests.support.origin import Origin
from tests.support.registry import RegistryServer, make_oci_layout

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack")]

CLI_DIR = Path(__file__).resolve().parents[2] / "cli"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Sent as a header value in the tests below, and looked for in every output.
SECRET = "s3cr3t-token-value"
UNKNOWN_TASK = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Module scope: a process holds one LocalStack at a time, and other modules start their own.
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("cli-supernode-cache"),
        visibility_timeout=5,
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1"},
        # Where the stack's bus rule appends the completion events, as `make run`'s .local/ does.
        events_file=tmp_path_factory.mktemp("cli-events") / "events.jsonl",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of three layers and a config: four blobs."""
    layers = [f"cli layer {n}\n".encode() * (500 * (n + 1)) for n in range(3)]
    layout = make_oci_layout(tmp_path_factory.mktemp("cli-image"), layers, config={"config": {"Cmd": ["sh"]}})
    registry.push(layout, "cli/app:v1", fmt="oci")
    return f"{registry.host}/cli/app:v1"


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PREHEAT_ENDPOINT", "PREHEAT_API_KEY")}
    # The work tree's copy, installed or not.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLI_DIR), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "preheat_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        cwd=cwd,
        check=False,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_exits_0_and_its_json_is_the_api_answer(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    result = run_cli("--endpoint", stack.api_url, "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout

    # Global options are accepted after the command too.
    code, out, err = run_main(capsys, "check", "--endpoint", stack.api_url, "--json")
    assert code == 0, err
    assert json.loads(out) == {"code": 200}


def test_image_wait_draws_the_bar_up_to_100_percent(stack: LocalStack, image: str, tmp_path: Path):
    # TTY_COMPATIBLE=1 is rich's own switch for "draw as on a terminal" where it cannot tell.
    result = run_cli(
        "--endpoint",
        stack.api_url,
        "image",
        image,
        "--wait",
        "--interval",
        "0.2",
        cwd=tmp_path,
        env={"TTY_COMPATIBLE": "1", "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b[" in result.stdout  # drawn as a live bar, not as plain lines
    text = ANSI.sub("", result.stdout)
    final_frame = text.rstrip().splitlines()[-2]  # the bar's last frame, then the SUCCESS line
    assert "SUCCESS" in final_frame
    assert "4/4" in final_frame
    assert "100%" in final_frame
    assert text.rstrip().splitlines()[-1].startswith("SUCCESS: task ")


def test_image_wait_off_a_terminal_prints_plain_lines_ending_at_4_of_4(
    stack: LocalStack, image: str, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run_main(
        capsys,
        "--endpoint",
        stack.api_url,
        "image",
        image,
        "--header",
        f"Authorization=Bearer {SECRET}",
        "--wait",
        "--interval",
        "0.2",
    )
    assert code == 0, out + err
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("task ")
    progress = [line for line in lines if line.startswith("[")]
    assert progress, out
    assert progress[-1].endswith("SUCCESS 4/4 blobs warmed (100%)")
    assert lines[-1].endswith("4/4 blobs warmed (100%)")
    assert SECRET not in out + err


def test_json_wait_prints_the_final_status_answer_only(
    stack: LocalStack, image: str, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run_main(
        capsys,
        "--json",
        "--endpoint",
        stack.api_url,
        "image",
        image,
        "--header",
        f"Authorization=Bearer {SECRET}",
        "--wait",
        "--interval",
        "0.2",
    )
    assert code == 0, err
    answer = json.loads(out)  # the whole of stdout is one JSON document
    assert answer["code"] == 200
    assert answer["data"]["status"] == "SUCCESS"
    assert answer["data"]["layers"] == {"total": 4, "succeeded": 4, "failed": 0, "pending": 0}
    assert SECRET not in out + err

    task_id = answer["data"]["taskId"]
    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "status", task_id, "--detail")
    assert code == 0, err
    assert f"task      {task_id}" in out
    assert "SUCCESS" in out
    assert len([line for line in out.splitlines() if line.strip().startswith("SUCCESS  sha256:")]) == 4
    # Under each blob, the URL preheated and the Dragonfly 1 task id a node computes for it.
    key = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"
    proofs = [line.split() for line in out.splitlines() if line.startswith("    url ")]
    assert len(proofs) == 4
    for _, url, _node, _task, _id, task in proofs:
        assert url.startswith(f"http://{image.split('/', maxsplit=1)[0]}/")
        assert "/blobs/sha256:" in url
        assert task == hashlib.sha256(f"{key}{url}{key}".encode()).hexdigest()

    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "--json", "status", task_id)
    assert code == 0, err
    assert json.loads(out)["data"]["taskId"] == task_id


def test_a_missing_tag_exits_1_with_the_tasks_message(
    stack: LocalStack, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run_main(
        capsys,
        "--endpoint",
        stack.api_url,
        "image",
        f"{registry.host}/cli/app:nope",
        "--wait",
        "--interval",
        "0.2",
    )
    assert code == 1, out + err
    assert "FAIL" in err
    assert "not found" in err
    assert "cli/app" in err


def test_a_bad_file_url_exits_1_with_the_apis_400_message(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    result = run_cli("--endpoint", stack.api_url, "file", "ftp://x", cwd=tmp_path)
    assert result.returncode == 1
    assert "error 400" in result.stderr
    assert "http:// or https://" in result.stderr
    assert result.stdout == ""

    code, out, _ = run_main(capsys, "--endpoint", stack.api_url, "--json", "file", "ftp://x", "--wait")
    assert code == 1
    answer = json.loads(out)
    assert answer["code"] == 400
    assert "http:// or https://" in answer["msg"]


def test_a_header_without_equals_is_bad_usage_and_is_not_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    result = run_cli(
        "file", "https://example.com/f", "--header", f"Authorization: Bearer {SECRET}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "NAME=VALUE" in result.stderr
    assert SECRET not in result.stdout + result.stderr

    # With '=' inside the value, the "name" part would carry the token: refused too, unrepeated.
    code, out, err = run_main(
        capsys, "file", "https://example.com/f", "--header", f"Authorization: {SECRET}=="
    )
    assert code == 2
    assert SECRET not in out + err


def test_status_of_an_unknown_task_exits_1(stack: LocalStack, capsys: pytest.CaptureFixture[str]):
    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "status", UNKNOWN_TASK)
    assert code == 1
    assert out == ""
    assert "error 404" in err
    assert "no preheat task" in err

    # --wait does not poll an answer that will not change.
    code, _, err = run_main(capsys, "--endpoint", stack.api_url, "status", UNKNOWN_TASK, "--wait")
    assert code == 1
    assert "error 404" in err


def test_an_unreachable_endpoint_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    code, out, err = run_main(capsys, "--endpoint", f"http://127.0.0.1:{port}", "check")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot reach the Preheat API" in err
    assert "Connection refused" in err


def test_the_console_script_is_installed(tmp_path: Path):
    script = Path(sys.executable).parent / "preheat"
    if not script.exists():
        pytest.fail(f"{script} is not installed: `make test` and `make run` install it (pip install -e .)")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("image", "file", "status", "check"):
        assert command in result.stdout


def test_list_shows_tasks_newest_first_with_filters_pages_and_json(stack: LocalStack, tmp_path: Path):
    import requests

    # Files the reference supernode does not serve (404): the tasks end FAIL at once, saying why.
    submitted = []
    for n in range(5):
        body = {"type": "file", "url": f"{stack.supernodes[0]}/files/list-{n}.bin"}
        answer = requests.post(f"{stack.api_url}/api/preheat", json=body, timeout=10).json()
        submitted.append(answer["data"]["taskId"])
    for task_id in submitted:
        result = run_cli(
            "--endpoint", stack.api_url, "status", task_id, "--wait", "--interval", "0.1", cwd=tmp_path
        )
        assert result.returncode == 1, result.stderr

    result = run_cli("--endpoint", stack.api_url, "list", "--status", "FAIL", "--limit", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("    ")]
    assert [line.split()[0] for line in lines] == submitted[::-1][:3]
    assert all(" FAIL " in line for line in lines)
    assert "list-4.bin" in lines[0]
    assert "404" in result.stdout  # each FAIL's message, under its line

    # --json: the API's answer (tests/cli/test_cli_parts.py walks several pages).
    result = run_cli(
        "--endpoint", stack.api_url, "--json", "list", "--type", "file", "--limit", "150", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["code"] == 200
    listed = [task["taskId"] for task in answer["data"]["tasks"]]
    assert listed[:5] == submitted[::-1]
    assert all(task["type"] == "file" for task in answer["data"]["tasks"])
    assert answer["data"]["next"] is None

    result = run_cli(
        "--endpoint", stack.api_url, "list", "--status", "RUNNING", "--type", "image", cwd=tmp_path
    )
    assert (result.returncode, result.stdout) == (0, "no tasks\n")
    for bad in (["--limit", "0"], ["--limit", "1001"], ["--status", "DONE"]):
        assert run_cli("list", *bad, cwd=tmp_path).returncode == 2


class OpensTheGate:
    """A progress view that lets the origin answer once the wait has seen the task RUNNING."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.seen: list[str] = []

    def start(self) -> None:
        pass

    def update(self, data: dict[str, object]) -> None:
        self.seen.append(str(data["status"]))
        self.origin.gate.set()

    def stop(self) -> None:
        pass


def test_the_wait_against_the_local_stack_ends_on_the_completion_event(stack: LocalStack):
    """Polls a long interval apart: the wait ends because the task's event reached the stack's
    events file, with one more poll, never waiting a poll's turn."""
    assert stack.events_file is not None
    with contextlib.closing(Origin({"/held.bin": b"held " * 2000})) as origin:
        origin.gate.clear()  # the download, hence the task, waits for the first poll
        client = PreheatClient(stack.api_url)
        answer = client.submit("file", origin.url("/held.bin"))
        task_id = answer.data["taskId"]
        view = OpensTheGate(origin)

        pauses: list[float] = []

        def sleep(seconds: float) -> None:
            pauses.append(seconds)
            time.sleep(seconds)

        final = wait_for_task(
            client,
            task_id,
            view,
            timeout=120,
            interval=600,
            events=EventsFile(stack.events_file),
            sleep=sleep,
        )

    assert final.data["status"] == "SUCCESS", final.data
    assert view.seen == ["RUNNING", "SUCCESS"]
    # Never a poll's interval waited out: only looks at the events file until the event came.
    assert pauses
    assert max(pauses) <= EVENT_LOOK_SECONDS


def test_peers_shows_the_warm_blobs_then_evict_then_peers_shows_them_gone(
    stack: LocalStack, image: str, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "--json", "image", image, "--wait")
    assert code == 0, out + err
    task_id = json.loads(out.splitlines()[-1])["data"]["taskId"]  # --wait --json: the final status last

    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "peers", task_id)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["BLOB", "TARGET", "PEER", "IP", "FINISHED", "WARM"]
    rows = [line.split() for line in lines[1:5]]
    assert all(row[-2:] == ["yes", "yes"] for row in rows), out
    assert "warm: 4 of 4 blobs" in out

    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "evict", task_id)
    assert code == 0, out + err
    assert f"task {task_id} evicted at" in out
    assert "4 of 4 evicted" in out

    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "peers", task_id)
    assert code == 1  # not warm: a script can gate on it
    assert "warm: 0 of 4 blobs; peers with every blob: none" in out
    assert all(line.split()[2:] == ["-", "-", "-", "no"] for line in out.splitlines()[1:5]), out

    code, out, err = run_main(capsys, "--endpoint", stack.api_url, "evict", UNKNOWN_TASK)
    assert code == 1
    assert "error 404" in err
