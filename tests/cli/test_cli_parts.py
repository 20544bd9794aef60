"""The ``preheat`` command's parts that need no service: where the endpoint comes from, how ``--wait``
polls (timeouts, blips), argument checks, and the progress views."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from preheat_cli.client import ClientError, Envelope, display_url
from preheat_cli.endpoint import DEFAULT_ENDPOINT, default_endpoint, local_events_file
from preheat_cli.main import header_argument, main
from preheat_cli.progress import BarView, PlainView, describe
from preheat_cli.waiting import MAX_CONSECUTIVE_FAILURES, EventsFile, WaitTimeout, wait_for_task

TASK = "0f8fad5b-d9cb-469f-a165-70867728950e"


def running(succeeded: int = 0, total: int = 4) -> Envelope:
    layers = {"total": total, "succeeded": succeeded, "failed": 0, "pending": total - succeeded}
    return Envelope({"code": 200, "data": {"taskId": TASK, "status": "RUNNING", "layers": layers}})


def ended(status: str, **extra: Any) -> Envelope:
    data = {
        "taskId": TASK,
        "status": status,
        "layers": {"total": 4, "succeeded": 4, "failed": 0, "pending": 0},
    }
    return Envelope({"code": 200, "data": {**data, **extra}})


class ScriptedApi:
    """Answers status polls from a script; a ClientError in it is raised instead."""

    def __init__(self, *answers: Envelope | ClientError) -> None:
        self.answers = list(answers)
        self.polls = 0

    def status(self, task_id: str, detail: bool = False) -> Envelope:
        self.polls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, ClientError):
            raise answer
        return answer


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def start(self) -> None:
        pass

    def update(self, data: Any) -> None:
        self.seen.append(dict(data))

    def stop(self) -> None:
        pass


def wait(api: ScriptedApi, timeout: float = 60) -> tuple[Envelope, Recorder, FakeTime]:
    view, time = Recorder(), FakeTime()
    final = wait_for_task(api, TASK, view, timeout=timeout, interval=1, clock=time.clock, sleep=time.sleep)
    return final, view, time


# -- waiting -------------------------------------------------------------------------------------


def test_wait_follows_the_task_until_it_ends():
    final, view, _ = wait(ScriptedApi(running(0), running(2), ended("SUCCESS")))
    assert final.data["status"] == "SUCCESS"
    assert [d["layers"]["succeeded"] for d in view.seen] == [0, 2, 4]


def test_wait_gives_up_at_the_deadline_with_the_last_answer():
    with pytest.raises(WaitTimeout) as caught:
        wait(ScriptedApi(running(1)), timeout=5)
    assert caught.value.last is not None
    assert caught.value.last.data["status"] == "RUNNING"
    assert f"preheat status {TASK} --wait" in str(caught.value)


def test_wait_outlives_a_few_failed_polls():
    blip = ClientError("connection reset")
    busy = Envelope({"code": 500, "msg": "service unavailable, try again"})
    final, _, _ = wait(ScriptedApi(running(), blip, busy, blip, running(3), ended("SUCCESS")))
    assert final.data["status"] == "SUCCESS"


def test_wait_stops_when_the_api_keeps_failing():
    with pytest.raises(ClientError):
        wait(ScriptedApi(ClientError("refused")))
    busy = Envelope({"code": 500, "msg": "service unavailable, try again"})
    api = ScriptedApi(busy)
    final, _, _ = wait(api)
    assert final.code == 500
    assert api.polls == MAX_CONSECUTIVE_FAILURES


def test_wait_returns_a_4xx_answer_at_once():
    api = ScriptedApi(Envelope({"code": 404, "msg": "no preheat task"}))
    final, _, _ = wait(api)
    assert final.code == 404
    assert api.polls == 1


def envelope_line(task_id: str, status: str = "SUCCESS") -> str:
    detail = {"taskId": task_id, "status": status}
    return json.dumps({"source": "preheat", "detail-type": "Preheat Task Finished", "detail": detail}) + "\n"


class EndsAt:
    """A task that ends at ``moment`` on a fake clock: its status answer turns SUCCESS, and its
    completion event is appended to ``events`` (the service writes the verdict, then puts the event)."""

    def __init__(self, moment: float, events: Path, time: FakeTime) -> None:
        self.moment, self.events, self.time = moment, events, time
        self.polls: list[float] = []

    def status(self, task_id: str, detail: bool = False) -> Envelope:
        self.polls.append(self.time.now)
        return ended("SUCCESS") if self.time.now >= self.moment else running(1)

    def sleep(self, seconds: float) -> None:
        before = self.time.now
        self.time.sleep(seconds)
        if before < self.moment <= self.time.now:
            with self.events.open("a") as events:
                events.write(envelope_line("some-other-task"))
                events.write(envelope_line(TASK))


def test_wait_against_the_local_stack_ends_on_the_completion_event_not_the_next_poll(tmp_path: Path):
    time = FakeTime()
    api = EndsAt(2.35, tmp_path / "events.jsonl", time)

    final = wait_for_task(
        api,
        TASK,
        Recorder(),
        timeout=60,
        interval=1,
        events=EventsFile(tmp_path / "events.jsonl"),
        clock=time.clock,
        sleep=api.sleep,
    )

    assert final.data["status"] == "SUCCESS"
    # Polls at 0, 1 and 2 s, then one as the event arrives (within a look of 0.1 s), not at 3 s.
    assert api.polls[:3] == pytest.approx([0, 1, 2])
    assert len(api.polls) == 4
    assert 2.35 <= api.polls[-1] < 2.35 + 0.1 + 1e-9


def test_without_the_events_file_the_wait_ends_on_the_first_poll_after_the_end(tmp_path: Path):
    time = FakeTime()
    api = EndsAt(2.35, tmp_path / "events.jsonl", time)

    final = wait_for_task(api, TASK, Recorder(), timeout=60, interval=1, clock=time.clock, sleep=api.sleep)

    assert final.data["status"] == "SUCCESS"
    assert api.polls == pytest.approx([0, 1, 2, 3])


def test_an_event_whose_status_still_reads_running_does_not_make_the_polls_spin(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    events.write_text(envelope_line(TASK))
    api, time = ScriptedApi(running(1)), FakeTime()

    with pytest.raises(WaitTimeout):
        wait_for_task(
            api,
            TASK,
            Recorder(),
            timeout=5,
            interval=1,
            events=EventsFile(events),
            clock=time.clock,
            sleep=time.sleep,
        )

    assert api.polls == 6  # 0 to 5 s, once a second


def test_the_events_file_is_read_on_by_complete_lines_and_ignores_what_is_not_an_event(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    events = EventsFile(path)
    assert not events.announced(TASK)  # no file yet
    path.write_text("not json\n" + json.dumps([1, 2]) + "\n" + envelope_line("another")[:-1])
    assert not events.announced(TASK)
    assert not events.announced("another")  # its line is not complete yet
    with path.open("a") as file:
        file.write("\n" + envelope_line(TASK, "FAIL"))
    assert events.announced("another")
    assert events.announced(TASK)


# -- where the endpoint comes from ---------------------------------------------------------------


def test_the_events_file_is_the_running_local_stack_s_and_only_for_its_own_endpoint(tmp_path: Path):
    (tmp_path / ".local").mkdir()
    state = {"pid": os.getpid(), "api_url": "http://127.0.0.1:4321", "events_file": str(tmp_path / "e.jsonl")}
    (tmp_path / ".local" / "stack.json").write_text(json.dumps(state))

    assert local_events_file("http://127.0.0.1:4321/", {}, tmp_path) == tmp_path / "e.jsonl"
    assert local_events_file("https://abc.execute-api.eu-west-1.amazonaws.com/v1", {}, tmp_path) is None
    assert local_events_file("http://127.0.0.1:4321", {}, tmp_path / "elsewhere-without-a-stack") == (
        tmp_path / "e.jsonl"
    )  # found from a subdirectory too, as the endpoint is
    state.pop("events_file")
    (tmp_path / ".local" / "stack.json").write_text(json.dumps(state))
    assert local_events_file("http://127.0.0.1:4321", {}, tmp_path) is None


def write_state(directory: Path, pid: int, url: str = "http://127.0.0.1:4321") -> None:
    (directory / ".local").mkdir(parents=True)
    (directory / ".local" / "stack.json").write_text(json.dumps({"pid": pid, "api_url": url}))


def test_the_endpoint_comes_from_the_variable_then_a_running_local_stack(tmp_path: Path):
    write_state(tmp_path, os.getpid())
    below = tmp_path / "some" / "subdir"
    below.mkdir(parents=True)
    assert default_endpoint({}, below) == "http://127.0.0.1:4321"
    assert default_endpoint({"PREHEAT_ENDPOINT": "https://x.example/Prod"}, below) == "https://x.example/Prod"


def test_a_stale_stack_file_is_ignored(tmp_path: Path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: no process has this pid now (until the system reuses it)
    write_state(tmp_path, gone.pid)
    assert default_endpoint({}, tmp_path) == DEFAULT_ENDPOINT


def test_the_local_dir_variable_points_at_the_stack_file(tmp_path: Path):
    write_state(tmp_path / "custom", os.getpid(), "http://127.0.0.1:5555")
    assert default_endpoint({"PREHEAT_LOCAL_DIR": "custom/.local"}, tmp_path) == "http://127.0.0.1:5555"


# -- arguments -----------------------------------------------------------------------------------


def test_header_arguments():
    assert header_argument("Authorization=Basic YTpi==") == ("Authorization", "Basic YTpi==")
    assert header_argument("X-Empty=") == ("X-Empty", "")
    for bad in ("Authorization", "=value", "Authorization: Bearer abc=="):
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            header_argument(bad)
        assert "abc" not in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["image", "x.io/a:b", "--timeout", "0"],
        ["image", "x.io/a:b", "--interval", "soon"],
        ["--progress", "fancy", "check"],
        ["--endpoint", "ftp://x", "check"],
        ["launch"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]):
    assert main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out


def test_an_endpoints_credentials_are_not_shown():
    assert display_url("https://user:pw@api.example/Prod") == "https://api.example/Prod"


# -- progress views ------------------------------------------------------------------------------


def test_success_is_100_percent_even_without_layer_counts():
    assert describe({"status": "SUCCESS"}) == "1/1 blobs warmed (100%)"
    assert describe({"status": "RUNNING"}) == "resolving blobs"
    assert describe(running(1).data) == "1/4 blobs warmed (25%)"


def test_the_bar_ends_at_100_percent_on_success():
    out = io.StringIO()
    bar = BarView(Console(file=out, force_terminal=True, width=100))
    bar.start()
    bar.update({"status": "RUNNING"})
    bar.update(running(2).data)
    bar.update(ended("SUCCESS").data)
    bar.stop()
    # Frames are separated by carriage returns; the escape codes colour and hide the cursor.
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).rstrip().splitlines()[-1]
    assert "SUCCESS" in last
    assert "4/4" in last
    assert "100%" in last


def test_plain_lines_only_when_something_changed():
    out = io.StringIO()
    view = PlainView(out, clock=lambda: 0.0)
    for answer in (running(0), running(0), running(3), ended("SUCCESS")):
        view.update(answer.data)
    assert out.getvalue().splitlines() == [
        "[   0.0s] RUNNING 0/4 blobs warmed (0%)",
        "[   0.0s] RUNNING 3/4 blobs warmed (75%)",
        "[   0.0s] SUCCESS 4/4 blobs warmed (100%)",
    ]


class PagedApi:
    """Answers listings page by page from ``tasks``, recording each call's limit and cursor."""

    def __init__(self, count: int) -> None:
        self.tasks = [{"taskId": f"t{n}", "status": "SUCCESS", "url": f"u{n}"} for n in range(count)]
        self.calls: list[tuple[int, str | None]] = []

    def list(
        self, status: Any = None, type: Any = None, limit: int = 20, cursor: str | None = None
    ) -> Envelope:
        self.calls.append((limit, cursor))
        start = int(cursor or 0)
        page = self.tasks[start : start + limit]
        following = str(start + limit) if start + limit < len(self.tasks) else None
        return Envelope({"code": 200, "data": {"tasks": page, "next": following}})


def test_list_walks_pages_up_to_its_limit_and_joins_them(monkeypatch: pytest.MonkeyPatch):
    from preheat_cli import main as cli

    monkeypatch.setattr(cli, "PAGE_SIZE", 4)
    api = PagedApi(10)
    stdout = io.StringIO()
    args = argparse.Namespace(status=None, type=None, limit=9)
    assert cli._list(args, api, cli.Output(True, stdout, io.StringIO())) == 0  # type: ignore[arg-type]
    answer = json.loads(stdout.getvalue())
    assert [task["taskId"] for task in answer["data"]["tasks"]] == [f"t{n}" for n in range(9)]
    assert answer["data"]["next"] == "9"  # where a later call would go on
    assert api.calls == [(4, None), (4, "4"), (1, "8")]
    # Plain output: a line per task.
    stdout = io.StringIO()
    assert (
        cli._list(
            argparse.Namespace(status=None, type=None, limit=20),
            PagedApi(3),
            cli.Output(False, stdout, io.StringIO()),
        )
        == 0
    )  # type: ignore[arg-type]
    assert [line.split()[0] for line in stdout.getvalue().splitlines()] == ["t0", "t1", "t2"]


def test_the_peers_table_says_unknown_for_an_unreachable_target_and_notes_a_pending_manager():
    from preheat_cli.lifecycle import peers_table

    data = {
        "checkedAt": "2026-12-06T03:00:00.000Z",
        "blobs": [
            {
                "digest": "sha256:" + "a" * 64,
                "nodeTaskId": "n1",
                "target": "http://sn1:8002",
                "peers": [{"host": "sn1:8002", "ip": "sn1", "finished": True}],
                "warm": True,
            },
            {
                "digest": "sha256:" + "a" * 64,
                "nodeTaskId": "n1",
                "target": "http://sn2:8002",
                "peers": [{"host": "sn2:8002", "ip": "sn2", "finished": None}],
                "warm": None,
            },
            {
                "digest": "sha256:" + "b" * 64,
                "nodeTaskId": None,
                "target": "http://sn1:8002",
                "peers": [],
                "warm": False,
            },
        ],
        "summary": {"layersWarm": 0, "layersTotal": 2, "peersWithEveryLayer": []},
        "pending": True,
        "unreachable": ["http://sn2:8002"],
    }

    lines = peers_table(data)

    assert lines[0].split() == ["BLOB", "TARGET", "PEER", "IP", "FINISHED", "WARM"]
    assert lines[1].split() == ["sha256:aaaaaaaaaaaa", "http://sn1:8002", "sn1:8002", "sn1", "yes", "yes"]
    assert lines[2].split()[-2:] == ["unknown", "unknown"]
    assert lines[3].split()[2:] == ["-", "-", "-", "no"]
    text = "\n".join(lines)
    assert "warm: 0 of 2 blobs; peers with every blob: none" in text
    assert "pending" in text
    assert "unreachable (finished unknown): http://sn2:8002" in text
