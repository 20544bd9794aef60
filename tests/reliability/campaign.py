"""The fault campaign: every scenario's tasks submitted back to back to one local stack and in
flight together, followed to their end; then the queues are left to settle and the figures counted.

One stack runs them all because the faults must meet each other as they would in production (a
moto outage hits every task in flight, a crashed invocation takes its neighbours down with it),
and because the scenarios then take as long as the slowest of them rather than their sum.

How each fault reaches exactly the tasks meant for it:

- registry faults are set per repository of the :class:`~tests.reliability.faults.FaultyRegistry`
  (each task preheats an image of its own);
- supernode faults use ``PREHEAT_SUPERNODE_SCOPE=one``: each blob goes to the one supernode
  rendezvous hashing of its digest picks, and every blob of a scenario is generated (a nonce in
  its content) until its digest picks that scenario's supernode: the healthy reference supernode,
  one that finishes slowly, a closed port, a slow proxy, or the stub whose tasks flip to FAILED;
- worker faults (kills, the moto outage) fire on the task of their repository, once.

The clock is production's, ten times faster (``SCALE``): the queues' visibility timeouts, the
worker's and the dead-letter consumer's function timeouts, the deadline and the retry backoff are
read from ``template.yaml`` (and the settings' defaults it leaves to them) and all multiplied by
that one factor, so that events come in production's order: a failed step comes back after its
backoff, well before the queue's visibility timeout, and a failure that lasts meets the deadline
before its receives run out. Counts (the receives before the dead-letter queue) are not scaled.
SQS counts delays and visibility in whole seconds, so scaled values below one second become one:
the scaled retries come, if anything, later than production's.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from local.aws import client as local_client
from local.stack import LocalStack
from local.supernode import ReferenceSupernode
from local.template import Template
from tests.reliability.faults import (
    DEEP_JSON,
    ClosedPort,
    Delays,
    FaultyRegistry,
    FlippingSupernode,
    HostileSupernode,
    MotoOutage,
    Script,
    SilentSupernode,
    SlowPlan,
    SlowSupernodeProxy,
    SurvivingSqsPoller,
    WorkerFaults,
    hostile,
    http_error,
    make_image,
    reset,
    sha256_digest,
    stall,
)

ROOT = Path(__file__).resolve().parents[2]
SCALE = 0.1  # production's clock, ten times faster
TEMPLATE = Template.load(ROOT / "template.yaml")
_SETTINGS = importlib.import_module("preheat.settings").Settings()  # the defaults the template keeps
_WORKER_ENV = TEMPLATE.functions["WorkerFunction"].environment


def _production(name: str) -> float:
    """A timing of production, in seconds, as the template (or the settings' defaults) set it."""
    queues, functions = TEMPLATE.queues, TEMPLATE.functions
    return {
        "queue visibility": float(queues["PreheatQueue"].properties["VisibilityTimeout"]),
        "dead-letter visibility": float(queues["PreheatDeadLetterQueue"].properties["VisibilityTimeout"]),
        "worker timeout": float(functions["WorkerFunction"].timeout),
        "dead-letter timeout": float(functions["DeadLetterFunction"].timeout),
        "deadline": float(TEMPLATE.parameters["TaskTimeoutSeconds"].default or 0),
        "retry base": float(_WORKER_ENV.get("PREHEAT_RETRY_BASE_DELAY", _SETTINGS.retry_base_delay_seconds)),
        "retry cap": float(_WORKER_ENV.get("PREHEAT_RETRY_MAX_DELAY", _SETTINGS.retry_max_delay_seconds)),
        "registry timeout": _SETTINGS.registry_timeout_seconds,
        "check window": _SETTINGS.check_window_seconds,
        "poll max delay": float(_SETTINGS.poll_max_delay_seconds),
    }[name]


def scaled(name: str) -> float:
    return _production(name) * SCALE


MAX_RECEIVES = TEMPLATE.queues["PreheatQueue"].max_receive_count
TASK_TIMEOUT = round(scaled("deadline"))
RETRY_CAP = scaled("retry cap")
REGISTRY_TIMEOUT = scaled("registry timeout")
# Not a template timing: kept at a second (twice the scaled 0.5 s) so that a supernode answering
# from a busy test process is not taken for a silent one.
SUPERNODE_TIMEOUT = 1.0
# Past its deadline a task must be terminal within this: its next retry comes at most a backoff
# later (or the next check a poll delay later), then runs within a function timeout.
DEADLINE_GRACE = RETRY_CAP + scaled("worker timeout") + 2
SETTLE_SECONDS = 20.0
MOTO_OUTAGE_SECONDS = 3.0
SLOW_FINISH_SECONDS = 8.0  # the "delayed" supernode: tasks in flight for several checks
STALL_SECONDS = 2.5 * REGISTRY_TIMEOUT
SUPERNODE_HOLD_SECONDS = 2.0 * SUPERNODE_TIMEOUT
FLIP_ERROR = "no space left on device (injected by the reliability suite)"
SHORT_OUTAGE = 20 * SCALE  # production's 20 s registry outage
CAP_OUTAGE = RETRY_CAP  # an outage as long as the backoff's cap
MANY_LAYERS = 1000

ENV = {
    "PREHEAT_REGISTRY_TIMEOUT": f"{REGISTRY_TIMEOUT:g}",
    "PREHEAT_SUPERNODE_TIMEOUT": f"{SUPERNODE_TIMEOUT:g}",
    "PREHEAT_TASK_TIMEOUT": str(TASK_TIMEOUT),
    "PREHEAT_POLL_INITIAL_DELAY": "1",  # SQS's shortest delay
    "PREHEAT_POLL_MAX_DELAY": str(max(1, round(scaled("poll max delay")))),
    "PREHEAT_CHECK_WINDOW": f"{scaled('check window'):g}",
    "PREHEAT_CHECK_INTERVAL": "0.25",
    "PREHEAT_RETRY_BASE_DELAY": f"{scaled('retry base'):g}",
    "PREHEAT_RETRY_MAX_DELAY": f"{RETRY_CAP:g}",
    # The campaign's registry faults strike blob redirects and file GETs, which the worker makes in
    # the spec's literal mode only (registry blob URLs, the default, need no request per blob).
    "PREHEAT_LAYER_URLS": "storage",
}


def scaled_template() -> Template:
    """The template with the timings of the functions and queues a fault meets, scaled."""
    functions = dict(TEMPLATE.functions)
    for name in ("WorkerFunction", "DeadLetterFunction"):
        functions[name] = replace(functions[name], timeout=max(1, round(functions[name].timeout * SCALE)))
    queues = dict(TEMPLATE.queues)
    for name, spec in queues.items():
        if "VisibilityTimeout" in spec.properties:
            visibility = max(1, math.ceil(float(spec.properties["VisibilityTimeout"]) * SCALE))
            queues[name] = replace(spec, properties={**spec.properties, "VisibilityTimeout": visibility})
    return replace(TEMPLATE, functions=functions, queues=queues)


# Supernode roles (see Servers.targets for their order in PREHEAT_SUPERNODES).
FAST, DELAYED, DOWN, SLOW, FLIP = "fast", "delayed", "down", "slow", "flip"
SILENT, HOSTILE = "silent", "hostile"

Fragment = str | tuple[str, ...]  # a tuple: any one of them
T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    """A fault and what it must end in: ``expect`` and every fragment in the task's ``msg``."""

    name: str
    fault: str
    expect: str
    fragments: Callable[[Case], list[Fragment]] = lambda case: []
    # The status answer's ``layers``: {} when it has none (nothing resolved); unset: every layer
    # succeeded on a SUCCESS, not checked on a FAIL.
    layers: Callable[[Case], dict[str, int]] | None = None
    target: str = FAST
    registry: tuple[tuple[str, Script, bool], ...] = ()  # (kind, script, last blob only)
    slow: SlowPlan | None = None
    stuck: bool = False
    worker: str | None = None  # kill-save, kill-send-1, kill-send-2, moto
    held_until_fired: bool = False  # the slow proxy keeps its tasks RUNNING until the worker fault fired
    file: bool = False
    copies: int = 1
    layers_count: int = 2
    long_errors: bool = False  # the flipping supernode fails each task with a long error of its own
    hostile: str | None = None  # what the hostile supernode answers this scenario's blobs


@dataclass
class Case:
    """One task of a scenario, and what became of it."""

    scenario: Scenario
    index: int
    repository: str
    url: str
    labels: list[str]
    target: str
    registry_host: str
    task_id: str = ""
    deadline: float = 0.0  # epoch seconds, the table's
    terminal_seen_at: float | None = None  # epoch seconds, first seen terminal in the table
    item: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None
    rescued_by_status: bool = False  # RUNNING in the table past deadline + grace: no worker left
    hold: threading.Event | None = None  # set to let the slow proxy answer SUCCESS

    @property
    def name(self) -> str:
        return f"{self.scenario.name}[{self.index}]"

    @property
    def image(self) -> str:
        return self.url

    @property
    def last(self) -> str:
        return self.labels[-1]

    @property
    def status(self) -> str | None:
        return None if self.answer is None else self.answer.get("status")

    @property
    def msg(self) -> str:
        return "" if self.answer is None else str(self.answer.get("msg") or "")

    @property
    def ended_by(self) -> str:
        if self.rescued_by_status:
            return "status API"
        if self.item is None:
            return "nobody"
        if self.msg.startswith("the worker gave up"):
            return "dead-letter consumer"
        return "worker"

    def expected_layers(self) -> dict[str, int] | None:
        if self.scenario.layers is not None:
            return self.scenario.layers(self)
        if self.scenario.expect == "SUCCESS":
            n = len(self.labels)
            return {"total": n, "succeeded": n, "failed": 0, "pending": 0}
        return None

    def problems(self) -> list[str]:
        """Why this task did not end as its fault should make it end; empty when it did."""
        if self.answer is None:
            return ["no status answer"]
        found: list[str] = []
        if self.status != self.scenario.expect:
            found.append(f"status {self.status}, expected {self.scenario.expect}")
        for fragment in self.scenario.fragments(self):
            options = (fragment,) if isinstance(fragment, str) else fragment
            if not any(option in self.msg for option in options):
                found.append(f"msg lacks {' or '.join(map(repr, options))}")
        if self.scenario.expect == "SUCCESS" and self.msg:
            found.append("a SUCCESS with a msg")
        layers = self.expected_layers()
        shown = self.answer.get("layers", {})
        # {} expects no layers at all; otherwise the counts it names must be as given.
        named = shown if not layers else {key: shown.get(key) for key in layers}
        if layers is not None and named != layers:
            found.append(f"layers {self.answer.get('layers')}, expected {layers or 'none'}")
        if not self.answer.get("finishTime"):
            found.append("no finishTime")
        if self.terminal_seen_at is None or self.terminal_seen_at > self.deadline + DEADLINE_GRACE:
            found.append("still RUNNING past its deadline")
        if self.rescued_by_status:
            found.append("only the status API ended it (no message left to drive it)")
        return found


def _deadline(case: Case, what: str) -> list[Fragment]:
    """A start that never succeeded, ended by its deadline: what it waited for, its last error."""
    source = "the file's server" if case.scenario.file else "the registry"
    return [
        "timed out: still RUNNING at the deadline",
        f"waiting for {source} to resolve {case.url}",
        "; last error: ",
        what,
    ]


def _manifest(case: Case) -> str:
    return f"could not fetch the manifest for {case.image} from registry {case.registry_host}"


def _on_each(case: Case, text: Callable[[str], str]) -> list[Fragment]:
    return [text(label) for label in case.labels]


def _failed_all(case: Case) -> dict[str, int]:
    n = len(case.labels)
    return {"total": n, "succeeded": 0, "failed": n, "pending": 0}


SCENARIOS: tuple[Scenario, ...] = (
    # -- registries ---------------------------------------------------------------------------
    Scenario(
        "registry-500-then-ok",
        "manifest: HTTP 500 twice",
        "SUCCESS",
        registry=(("manifest", Script.times(http_error(500), 2), False),),
        copies=2,
    ),
    Scenario(
        "registry-500-past-one-delivery",
        "manifest: HTTP 500 five times (one step tries 4)",
        "SUCCESS",
        registry=(("manifest", Script.times(http_error(500), 5), False),),
    ),
    Scenario(
        "registry-500-forever",
        "manifest: HTTP 500 forever",
        "FAIL",
        lambda case: [*_deadline(case, _manifest(case)), f"{case.registry_host} answered HTTP 500"],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(http_error(500)), False),),
    ),
    Scenario(
        "registry-429-then-ok",
        "manifest: HTTP 429 Retry-After 1 twice",
        "SUCCESS",
        registry=(("manifest", Script.times(http_error(429, "1"), 2), False),),
    ),
    Scenario(
        "registry-429-forever",
        "manifest: HTTP 429 Retry-After 1 forever",
        "FAIL",
        lambda case: [*_deadline(case, _manifest(case)), "answered HTTP 429: TOOMANYREQUESTS"],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(http_error(429, "1")), False),),
    ),
    Scenario(
        "registry-reset-then-ok",
        "manifest: connection reset mid-answer twice",
        "SUCCESS",
        registry=(("manifest", Script.times(reset(), 2), False),),
    ),
    Scenario(
        "registry-reset-forever",
        "manifest: connection reset mid-answer forever",
        "FAIL",
        lambda case: [
            *_deadline(case, _manifest(case)),
            ("the answer was cut off", "Connection reset by peer", "connection failed"),
        ],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(reset()), False),),
    ),
    Scenario(
        "registry-stall-then-ok",
        f"manifest: stalls {STALL_SECONDS:g}s once",
        "SUCCESS",
        registry=(("manifest", Script.times(stall(STALL_SECONDS), 1), False),),
    ),
    Scenario(
        "registry-stall-forever",
        f"manifest: stalls {STALL_SECONDS:g}s forever",
        "FAIL",
        lambda case: [*_deadline(case, _manifest(case)), f"timed out after {REGISTRY_TIMEOUT:g}s"],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(stall(STALL_SECONDS)), False),),
    ),
    Scenario(
        "registry-blob-500-then-ok",
        "every blob probe: HTTP 500 twice",
        "SUCCESS",
        registry=(("probe", Script.times(http_error(500), 2), False),),
    ),
    Scenario(
        "registry-blob-stall-forever",
        f"last blob's probe: stalls {STALL_SECONDS:g}s forever",
        "FAIL",
        lambda case: [
            *_deadline(case, f"could not resolve the blob {case.last} of {case.image}"),
            f"timed out after {REGISTRY_TIMEOUT:g}s",
            "(" + str(len(case.labels) - 1) + " already handed over)",
        ],
        # Every blob but the stalled one was handed over and warmed; the failed start step recorded
        # them for its retry (which creates nothing twice), so the answer counts them.
        # (Each was looked at once, right after its create: warm by then, or still pending.)
        layers=lambda case: {"total": len(case.labels) - 1, "failed": 0},
        registry=(("probe", Script.forever(stall(STALL_SECONDS)), True),),
    ),
    Scenario(
        "registry-download-500-forever",
        "last blob's download (by the supernode): HTTP 500 forever",
        "FAIL",
        lambda case: [
            f"1 of {len(case.labels)} layer(s) failed to preheat: {case.last} on {case.target}: "
            f"supernode {case.target} failed task",
            f"/v2/{case.repository}/blobs/{case.last} answered HTTP 500",
        ],
        layers=lambda case: {
            "total": len(case.labels),
            "succeeded": len(case.labels) - 1,
            "failed": 1,
            "pending": 0,
        },
        registry=(("download", Script.forever(http_error(500)), True),),
    ),
    Scenario(
        "registry-down-20s-then-back",
        f"manifest: HTTP 503 for {SHORT_OUTAGE:g}s (production's 20 s), then answers",
        "SUCCESS",
        registry=(("manifest", Script.outage(http_error(503), SHORT_OUTAGE), False),),
    ),
    Scenario(
        "registry-down-for-the-cap-then-back",
        f"manifest: HTTP 503 for {CAP_OUTAGE:g}s (the backoff's cap), then answers",
        "SUCCESS",
        registry=(("manifest", Script.outage(http_error(503), CAP_OUTAGE), False),),
    ),
    # -- registries answering what no registry should (each must end the task, never crash a step)
    Scenario(
        "registry-deep-manifest",
        "manifest: JSON nested 100,000 deep",
        "FAIL",
        lambda case: [f"manifest for {case.image} is not valid JSON"],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(hostile(200, DEEP_JSON, "deep JSON")), False),),
    ),
    Scenario(
        "registry-deep-503-then-ok",
        "manifest: HTTP 503 whose body nests 100,000 deep, five times",
        "SUCCESS",
        registry=(("manifest", Script.times(hostile(503, DEEP_JSON, "503 deep JSON"), 5), False),),
    ),
    Scenario(
        "registry-not-utf8-manifest",
        "manifest: bytes that are not UTF-8",
        "FAIL",
        lambda case: [f"manifest for {case.image} is not valid JSON"],
        layers=lambda case: {},
        registry=(("manifest", Script.forever(hostile(200, b'{"layers": "\xff\xfe"}', "not UTF-8")), False),),
    ),
    Scenario(
        "file-500-then-ok",
        "file: HTTP 500 twice",
        "SUCCESS",
        registry=(("file", Script.times(http_error(500), 2), False),),
        file=True,
    ),
    # -- supernodes ---------------------------------------------------------------------------
    Scenario(
        "supernode-down",
        "supernode: closed port",
        "FAIL",
        lambda case: [
            f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
            *_on_each(
                case,
                lambda label: (
                    f"{label} on {case.target}: supernode {case.target} did not accept the "
                    f"preheat of {label} after 3 attempts: connection refused"
                ),
            ),
        ],
        layers=_failed_all,
        target=DOWN,
        copies=2,
    ),
    Scenario(
        "supernode-slow-create-then-ok",
        f"supernode: first create of each blob held {SUPERNODE_HOLD_SECONDS:g}s",
        "SUCCESS",
        target=SLOW,
        slow=SlowPlan(create=Delays((SUPERNODE_HOLD_SECONDS,))),
    ),
    Scenario(
        "supernode-slow-status-then-ok",
        f"supernode: first 4 status answers of each blob held {SUPERNODE_HOLD_SECONDS:g}s",
        "SUCCESS",
        target=SLOW,
        slow=SlowPlan(status=Delays((SUPERNODE_HOLD_SECONDS,) * 4)),
    ),
    Scenario(
        "supernode-slow-forever",
        f"supernode: every create held {SUPERNODE_HOLD_SECONDS:g}s",
        "FAIL",
        lambda case: [
            f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
            *_on_each(
                case,
                lambda label: (
                    f"supernode {case.target} did not accept the preheat of {label} after 3 "
                    f"attempts: timed out after {float(SUPERNODE_TIMEOUT)}s"
                ),
            ),
        ],
        layers=_failed_all,
        target=SLOW,
        slow=SlowPlan(create=Delays((), SUPERNODE_HOLD_SECONDS)),
    ),
    Scenario(
        "supernode-silent",
        "supernode: accepts connections, never answers",
        "FAIL",
        lambda case: [
            f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
            f"supernode {case.target} did not accept the preheat of",
            f"timed out after {SUPERNODE_TIMEOUT}s",
        ],
        layers=_failed_all,
        target=SILENT,
    ),
    *(
        Scenario(
            f"supernode-answers-{mode}",
            f"supernode: answers its creates with {what}",
            "FAIL",
            lambda case, reason=reason: [
                f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
                f"supernode {case.target} ",
                reason,
            ],
            layers=_failed_all,
            target=HOSTILE,
            hostile=mode,
        )
        for mode, what, reason in (
            ("deep", "JSON nested 100,000 deep", 'without a task "ID"'),
            ("huge", "3 MiB", "answered more than 1048576 bytes"),
            ("types", "an ID that is an object", 'without a task "ID"'),
            ("utf8", "bytes that are not UTF-8", 'without a task "ID"'),
        )
    ),
    Scenario(
        f"{MANY_LAYERS}-layers-all-fail-with-long-errors",
        f"{MANY_LAYERS} layers, each failed by its supernode with a long error of its own",
        "FAIL",
        lambda case: [
            f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
            FLIP_ERROR,
            f"(and {len(case.labels) - 10} more)",
        ],
        layers=_failed_all,
        target=FLIP,
        layers_count=MANY_LAYERS,
        long_errors=True,
    ),
    Scenario(
        "supernode-flips-to-failed",
        "supernode: WAITING, RUNNING, then FAILED",
        "FAIL",
        lambda case: [
            f"{len(case.labels)} of {len(case.labels)} layer(s) failed to preheat",
            *_on_each(case, lambda label: f"{label} on {case.target}: supernode {case.target} failed task"),
            FLIP_ERROR,
        ],
        layers=_failed_all,
        target=FLIP,
    ),
    Scenario(
        "supernode-stuck-running",
        "supernode: RUNNING forever (the task deadline ends it)",
        "FAIL",
        lambda case: ["timed out: still RUNNING at the deadline", "still pending: ", *case.labels],
        layers=lambda case: {
            "total": len(case.labels),
            "succeeded": 0,
            "failed": 0,
            "pending": len(case.labels),
        },
        target=FLIP,
        stuck=True,
    ),
    # -- the worker dies ----------------------------------------------------------------------
    Scenario(
        "worker-killed-after-progress-save",
        "worker: invocation dies after start saved its progress",
        "SUCCESS",
        target=DELAYED,
        worker="kill-save",
    ),
    Scenario(
        "worker-killed-after-send-in-start",
        "worker: invocation dies after start sent check 1, before saving it",
        "SUCCESS",
        # RUNNING until the kill: however long the start step watches, it has a check 1 to send.
        target=SLOW,
        worker="kill-send-1",
        held_until_fired=True,
    ),
    Scenario(
        "worker-killed-after-send-in-check",
        "worker: invocation dies after check 1 sent check 2, before saving it",
        "SUCCESS",
        target=SLOW,  # RUNNING until the kill: check 1 always has a check 2 to send
        worker="kill-send-2",
        held_until_fired=True,
    ),
    # -- AWS goes away ------------------------------------------------------------------------
    Scenario(
        "moto-restarted-between-steps",
        f"moto: down {MOTO_OUTAGE_SECONDS:g}s right after start saved its progress",
        "SUCCESS",
        target=DELAYED,
        worker="moto",
    ),
    # -- no fault of its own (each still meets the crashes and the outage) --------------------
    Scenario("healthy", "none", "SUCCESS", copies=2),
    Scenario(
        "healthy-slow-to-finish",
        f"none (blobs take {SLOW_FINISH_SECONDS:g}s)",
        "SUCCESS",
        target=DELAYED,
        copies=3,
    ),
)


# -- the servers the faults live in -------------------------------------------------------------


@dataclass
class Servers:
    registry: FaultyRegistry
    fast: ReferenceSupernode
    delayed: ReferenceSupernode
    down: ClosedPort
    slow: SlowSupernodeProxy
    flip: FlippingSupernode
    silent: SilentSupernode
    hostile: HostileSupernode

    @property
    def targets(self) -> dict[str, str]:
        return {
            FAST: self.fast.url,
            DELAYED: self.delayed.url,
            DOWN: self.down.url,
            SLOW: self.slow.url,
            FLIP: self.flip.url,
            SILENT: self.silent.url,
            HOSTILE: self.hostile.url,
        }


@contextmanager
def fault_servers(work: Path) -> Iterator[Servers]:
    with ExitStack() as stack:
        registry = stack.enter_context(FaultyRegistry())
        fast = stack.enter_context(ReferenceSupernode(work / "fast-cache", max_concurrent_downloads=16))
        delayed = stack.enter_context(
            ReferenceSupernode(
                work / "delayed-cache", max_concurrent_downloads=64, finish_delay=SLOW_FINISH_SECONDS
            )
        )
        down = ClosedPort()
        stack.callback(down.close)
        slow = stack.enter_context(SlowSupernodeProxy(fast.url))
        flip = stack.enter_context(FlippingSupernode(FLIP_ERROR))
        silent = SilentSupernode()
        stack.callback(silent.close)
        hostile_node = stack.enter_context(HostileSupernode())
        yield Servers(registry, fast, delayed, down, slow, flip, silent, hostile_node)


def _routed(make: Callable[[int], T], label: Callable[[T], str], target: str, targets: list[str]) -> T:
    """The first ``make(nonce)`` whose label rendezvous hashing sends to ``target``."""
    choose = importlib.import_module("preheat.placement").rendezvous_choice
    for nonce in range(10_000):
        made = make(nonce)
        if choose(label(made), targets) == target:
            return made
    raise AssertionError(f"nothing routes to {target}")


def _file_name(repository: str, nonce: int) -> str:
    return f"{repository.replace('/', '-')}-{nonce}.bin"


def _config(repository: str, nonce: int) -> bytes:
    return json.dumps({"config": {"Labels": {"repo": repository, "nonce": str(nonce)}}}).encode()


def _layer(repository: str, index: int, nonce: int, repeat: int = 200) -> bytes:
    return f"{repository} layer {index} nonce {nonce}\n".encode() * repeat


def build_cases(servers: Servers) -> list[Case]:
    """A repository (or file) per task, its content routed to its scenario's supernode, and its
    faults set on the servers."""
    targets = list(servers.targets.values())
    registry = servers.registry
    cases: list[Case] = []
    for scenario in SCENARIOS:
        target = servers.targets[scenario.target]
        for index in range(scenario.copies):
            repository = f"rel/{scenario.name}-{index}"
            if scenario.file:
                name = _routed(partial(_file_name, repository), registry.file_url, target, targets)
                url = registry.file_url(name)
                registry.add_file(name, f"file of {repository}\n".encode() * 500)
                cases.append(Case(scenario, index, name, url, [url], target, registry.host))
                key = name
            else:
                config = _routed(partial(_config, repository), sha256_digest, target, targets)
                repeat = 200 if scenario.layers_count <= 10 else 1  # nobody downloads the many
                layers = [
                    _routed(partial(_layer, repository, i, repeat=repeat), sha256_digest, target, targets)
                    for i in range(scenario.layers_count)
                ]
                image = make_image(repository, "v1", config, layers)
                registry.add_image(image)
                url = f"{registry.host}/{repository}:v1"
                cases.append(Case(scenario, index, repository, url, image.digests, target, registry.host))
                key = repository
            for kind, script, last_only in scenario.registry:
                registry.break_(key, kind, script, cases[-1].last if last_only else None)
            if scenario.slow is not None:
                servers.slow.plan(repository, scenario.slow)
            if scenario.stuck:
                servers.flip.stuck.add(repository)
            if scenario.long_errors:
                servers.flip.long_errors.add(repository)
            if scenario.hostile is not None:
                servers.hostile.modes[repository] = scenario.hostile
            if scenario.held_until_fired:
                cases[-1].hold = servers.slow.hold(repository)
    return cases


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    stack: LocalStack
    cases: list[Case]
    servers: Servers
    worker_faults: WorkerFaults
    outage: MotoOutage
    mid_flight_at_outage: list[str]  # task ids RUNNING when moto went down
    leftover: dict[str, dict[str, int]]  # queue -> attributes after settling
    settled_after: float
    started: float
    finished: float
    poller_batches_not_deleted: int
    figures: dict[str, Any] = field(default_factory=dict)

    def case(self, name: str) -> Case:
        return next(case for case in self.cases if case.name == name)

    def of(self, scenario: str) -> list[Case]:
        return [case for case in self.cases if case.scenario.name == scenario]


QUEUE_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def queue_counts(stack: LocalStack) -> dict[str, dict[str, int]]:
    sqs = local_client("sqs", stack.moto_url)
    counts = {}
    for queue in ("PreheatQueue", "PreheatDeadLetterQueue"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.queue_url(queue), AttributeNames=list(QUEUE_ATTRIBUTES)
        )["Attributes"]
        counts[queue] = {name: int(attributes.get(name, 0)) for name in QUEUE_ATTRIBUTES}
    return counts


def _scan(stack: LocalStack) -> dict[str, dict[str, Any]]:
    dynamodb = local_client("dynamodb", stack.moto_url)
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": stack.table_name("TasksTable"), "ConsistentRead": True}
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page["Items"]:
            items[item["pk"]["S"]] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _api(stack: LocalStack, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = requests.request(method, f"{stack.api_url}{path}", timeout=15, **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _submit(stack: LocalStack, case: Case) -> None:
    body = {"type": "file" if case.scenario.file else "image", "url": case.url}
    answer = _api(stack, "POST", "/api/preheat", json=body)
    assert answer["code"] == 200, (case.name, answer)
    case.task_id = answer["data"]["taskId"]


def run_campaign(work: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outcome]:
    """Start everything, run every scenario at once, yield the outcome, stop everything."""
    with fault_servers(work) as servers:
        cases = build_cases(servers)
        # See SurvivingSqsPoller: the local poller's threads must outlive the moto outage.
        monkeypatch.setattr("local.stack.SqsPoller", SurvivingSqsPoller)
        SurvivingSqsPoller.failed_batches = 0
        with LocalStack(
            scaled_template(),
            supernodes=list(servers.targets.values()),
            parameters={"SupernodeScope": "one", "LogLevel": "WARNING"},
            extra_env=ENV,
            poller_concurrency=4,
        ) as stack:
            worker_faults = WorkerFaults()
            worker_faults.install(monkeypatch)
            outage = MotoOutage(stack)
            mid_flight: list[str] = []

            def moto_goes_away() -> None:
                # Between two steps of the moto scenario's task, with every other task in flight.
                items = _scan(stack)
                mid_flight.extend(
                    pk for pk, item in items.items() if item.get("status", {}).get("S") == "RUNNING"
                )
                # Down until a step of the service met it: a watch may go seconds without a call.
                outage.outage(MOTO_OUTAGE_SECONDS, until=lambda: worker_faults.aws_failure_count() >= 1)

            for case in cases:
                if case.hold is not None:
                    worker_faults.when_fired[case.repository] = case.hold.set
                worker = case.scenario.worker
                if worker == "kill-save":
                    worker_faults.kill_after_progress_save.add(case.repository)
                elif worker in ("kill-send-1", "kill-send-2"):
                    worker_faults.kill_after_send[case.repository] = int(worker[-1])
                elif worker == "moto":
                    worker_faults.after_progress_save[case.repository] = moto_goes_away

            started = time.monotonic()
            # One POST at a time (a few ms each; the tasks still run side by side). Concurrent calls
            # run on threads of this one process, and powertools' resolver keeps the request in a
            # class attribute (BaseRouter.current_event): a POST may read another one's body and
            # answer with the task of that other request. Lambda never runs two invocations in one
            # process, so only the local stack has this race.
            for case in cases:
                _submit(stack, case)
            _follow(stack, cases)
            settle_started = time.monotonic()
            leftover = _settle(stack)
            settled_after = time.monotonic() - settle_started
            for case in cases:
                answer = _api(stack, "GET", f"/api/preheat/{case.task_id}")
                assert answer["code"] == 200, (case.name, answer)
                case.answer = answer["data"]
            finished = time.monotonic()
            outcome = Outcome(
                stack=stack,
                cases=cases,
                servers=servers,
                worker_faults=worker_faults,
                outage=outage,
                mid_flight_at_outage=mid_flight,
                leftover=leftover,
                settled_after=settled_after,
                started=started,
                finished=finished,
                poller_batches_not_deleted=SurvivingSqsPoller.failed_batches,
            )
            outcome.figures = figures(outcome)
            yield outcome


def _follow(stack: LocalStack, cases: Sequence[Case]) -> None:
    """Watch the table (not the status API, whose reads end expired tasks themselves) until every
    task is terminal; a task still RUNNING past its deadline and the grace is read through the
    status API, which must end it, and counts as one whose messages were lost."""
    pending = {case.task_id: case for case in cases}
    limit = time.time() + TASK_TIMEOUT + DEADLINE_GRACE + 30
    while pending and time.time() < limit:
        try:
            items = _scan(stack)
        except Exception:  # moto is down for a moment: that is one of the faults
            time.sleep(0.25)
            continue
        now = time.time()
        for task_id, case in list(pending.items()):
            item = items.get(task_id)
            if item is None:
                continue
            case.deadline = float(item["deadline"]["N"])
            if item["status"]["S"] != "RUNNING":
                case.item, case.terminal_seen_at = item, now
                del pending[task_id]
            elif now > case.deadline + DEADLINE_GRACE:
                answer = _api(stack, "GET", f"/api/preheat/{task_id}")
                case.rescued_by_status = True
                case.terminal_seen_at = None
                case.item = item
                assert answer["data"]["status"] != "RUNNING", (case.name, answer)
                del pending[task_id]
        time.sleep(0.25)


def _settle(stack: LocalStack) -> dict[str, dict[str, int]]:
    """Wait for both queues to empty (spare checks, redeliveries of crashed batches); what is left
    after SETTLE_SECONDS was never handled."""
    deadline = time.monotonic() + SETTLE_SECONDS
    counts = queue_counts(stack)
    while time.monotonic() < deadline and any(any(c.values()) for c in counts.values()):
        time.sleep(0.5)
        counts = queue_counts(stack)
    return counts


def figures(outcome: Outcome) -> dict[str, Any]:
    cases = outcome.cases
    left = sum(sum(counts.values()) for counts in outcome.leftover.values())
    rescued = sum(case.rescued_by_status for case in cases)
    by_scenario: dict[str, dict[str, Any]] = {}
    for case in cases:
        row = by_scenario.setdefault(
            case.scenario.name,
            {
                "fault": case.scenario.fault,
                "expected": case.scenario.expect,
                "tasks": 0,
                "correct": 0,
                "ended_by": [],
            },
        )
        row["tasks"] += 1
        row["correct"] += not case.problems()
        row["ended_by"].append(case.ended_by)
        row.setdefault("statuses", []).append(case.status)
    items = {case.name: _item_size(case.item) for case in cases if case.item is not None}
    largest = max(items, key=lambda name: items[name]) if items else None
    return {
        "timings": {
            "scale": SCALE,
            "deadline": TASK_TIMEOUT,
            "retry_cap": RETRY_CAP,
            "max_receives": MAX_RECEIVES,
            "env": ENV,
        },
        "largest_retry_delay_requested": round(max(outcome.worker_faults.retry_delays, default=0.0), 3),
        "retry_delays_requested": len(outcome.worker_faults.retry_delays),
        "longest_gap_between_attempts": _longest_gap(outcome),
        "largest_item": {"case": largest, "bytes": items.get(largest or "", 0)},
        "submitted": sum(bool(case.task_id) for case in cases),
        "terminal": sum(case.terminal_seen_at is not None and not case.rescued_by_status for case in cases),
        "correct": sum(not case.problems() for case in cases),
        "lost": left + rescued,
        "messages_left_on_queues": left,
        "tasks_whose_messages_stopped": rescued,
        "queues_after_settling": outcome.leftover,
        "ended_by_dead_letter_consumer": sum(case.ended_by == "dead-letter consumer" for case in cases),
        "worker_faults_fired": [f"{fired.what}: {fired.repository}" for fired in outcome.worker_faults.fired],
        "invocations_crashed": outcome.worker_faults.crashed_batches,
        "moto_outages": [round(up - down, 2) for down, up in outcome.outage.windows],
        "tasks_in_flight_at_outage": len(outcome.mid_flight_at_outage),
        "worker_aws_calls_failed": dict(outcome.worker_faults.aws_failures),
        "poller_batches_not_deleted": outcome.poller_batches_not_deleted,
        "seconds": round(outcome.finished - outcome.started, 1),
        "settled_after_seconds": round(outcome.settled_after, 1),
        "scenarios": by_scenario,
        "problems": {case.name: case.problems() for case in cases if case.problems()},
        "tasks": [
            {
                "case": case.name,
                "taskId": case.task_id,
                "status": case.status,
                "msg": case.msg,
                "layers": None if case.answer is None else case.answer.get("layers"),
                "ended_by": case.ended_by,
                "checks_sent": outcome.worker_faults.checks_sent.get(case.task_id, []),
                "seconds_past_deadline": None
                if case.terminal_seen_at is None
                else round(case.terminal_seen_at - case.deadline, 1),
            }
            for case in cases
        ],
    }


def _item_size(item: dict[str, Any]) -> int:
    """A table item's size as DynamoDB counts it against its 400 KB limit (names plus values)."""

    def value_size(value: dict[str, Any]) -> int:
        (kind, data), *_ = value.items()
        if kind == "S":
            return len(str(data).encode())
        if kind == "B":
            return len(data)
        if kind == "N":
            return len(str(data)) // 2 + 2
        if kind == "L":
            return 3 + sum(value_size(element) + 1 for element in data)
        return 1

    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def stored_blob_rows(item: dict[str, Any]) -> list[Any]:
    """The blob progress rows a task item holds (compressed JSON, see the DynamoDB adapter)."""
    data = item.get("blobs", {}).get("B")
    return json.loads(zlib.decompress(data)) if data else []


def _longest_gap(outcome: Outcome) -> dict[str, Any]:
    """The longest time between two attempts of a failing start, over the tasks whose manifest kept
    failing: attempts are the bursts of manifest requests (one step tries up to 4 times in a burst)."""
    longest: dict[str, Any] = {"seconds": 0.0, "case": None}
    for case in outcome.cases:
        if not any(kind == "manifest" for kind, _, _ in case.scenario.registry):
            continue
        times = [seen.at for seen in outcome.servers.registry.requests_for(case.repository, "manifest")]
        for earlier, later in itertools.pairwise(times):
            if later - earlier > longest["seconds"]:
                longest = {"seconds": round(later - earlier, 2), "case": case.name}
    return longest


def table(figures: dict[str, Any]) -> str:
    rows = [("scenario", "fault", "expected", "tasks", "correct", "ended by")]
    for name, row in figures["scenarios"].items():
        ended = ", ".join(sorted(set(row["ended_by"])))
        rows.append((name, row["fault"], row["expected"], str(row["tasks"]), str(row["correct"]), ended))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    for key in (
        "largest_retry_delay_requested",
        "retry_delays_requested",
        "longest_gap_between_attempts",
        "largest_item",
        "submitted",
        "terminal",
        "correct",
        "lost",
        "messages_left_on_queues",
        "tasks_whose_messages_stopped",
        "ended_by_dead_letter_consumer",
        "invocations_crashed",
        "moto_outages",
        "tasks_in_flight_at_outage",
        "worker_aws_calls_failed",
        "poller_batches_not_deleted",
        "seconds",
        "settled_after_seconds",
    ):
        lines.append(f"{key:<32} {figures[key]}")
    for name, problems in figures["problems"].items():
        lines.append(f"PROBLEM {name}: {'; '.join(problems)}")
    return "\n".join(lines)


def summary_line(figures: dict[str, Any]) -> str:
    return (
        f"reliability: submitted={figures['submitted']} terminal={figures['terminal']} "
        f"correct={figures['correct']} lost={figures['lost']}"
    )
