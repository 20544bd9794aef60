"""The whole service on 127.0.0.1, without Docker or AWS: ``python -m local.stack`` (``make run``).

One process runs moto (the template's tables and queues), the reference Dragonfly supernode (unless
``PREHEAT_SUPERNODES`` names real ones), the REST API in front of the ``Api`` functions, and one SQS
poller per ``SQS`` event. Everything is read from ``template.yaml``. Beside them, when ``docker-registry``
and ``skopeo`` are installed, a CNCF Distribution registry holding a demo image to preheat
(``127.0.0.1:5001/demo/app:v1``).

Variables (all optional):

* ``PREHEAT_API_PORT`` (3000), ``PREHEAT_MOTO_PORT`` (5000), ``PREHEAT_SUPERNODE_PORT`` (8002): 0 picks
  a free port.
* ``PREHEAT_SUPERNODES``: comma-separated supernode URLs to use instead of the reference supernode.
* ``PREHEAT_LOCAL_TARGET``: ``dragonfly1`` (the default: the reference supernode) or
  ``dragonfly2-scheduler``: the reference Dragonfly 2 scheduler (:mod:`local.dragonfly2_scheduler`,
  gRPC on ``PREHEAT_SUPERNODE_PORT``) instead, with ``PREHEAT_SUPERNODE_API=dragonfly2-scheduler`` and
  ``PREHEAT_SUPERNODES=<its host:port>`` set for the functions.
* ``PREHEAT_DEMO_REGISTRY_PORT`` (5001, 0 picks a free port): the demo registry's; ``PREHEAT_DEMO_REGISTRY=0``
  turns the demo registry off.
* ``PREHEAT_LOCAL_DIR`` (``.local``): where ``stack.json``, ``events.jsonl`` (every completion event, one
  JSON line each, see :mod:`local.events`), the supernode cache and the registry's data go.
* ``PREHEAT_LOCAL_VISIBILITY_TIMEOUT``: seconds, replaces every queue's VisibilityTimeout.
* ``PREHEAT_LOCAL_POLLERS`` (8): threads polling each SQS queue, each handling one batch at a time (a
  worker batch may watch its supernodes for 90 s, so 8 threads watch up to 40 tasks at once).
* ``PREHEAT_LOCAL_PARAMETERS``: a JSON object of template parameter values, like
  ``sam deploy --parameter-overrides`` (e.g. ``{"ScheduledPreheats": "[...]", "PreheatSchedule":
  "rate(1 minute)"}``).
* ``PREHEAT_API_KEY``: every route then wants this key, as the deployed API does with ``AuthMode=API_KEY``
  (``x-api-key``, ``Authorization: Bearer`` or the password of ``Authorization: Basic``; none is 401, another
  key 403). The ``preheat`` command sends the same variable's value as ``x-api-key``.
* ``PREHEAT_LOCAL_SCHEDULES=1``: fire the template's schedules (``ScheduleV2`` events and
  ``AWS::Scheduler::Schedule`` resources that exist with these parameters) at their functions.
* Any variable a function declares in the template (``PREHEAT_INSECURE_REGISTRIES``,
  ``POWERTOOLS_LOG_LEVEL``...) set in the shell wins over the template's value, like
  ``sam local --env-vars``; other ``PREHEAT_*`` settings simply pass through to the handlers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from local.apigateway import ApiGateway, routes_from_template
from local.aws import DEFAULT_NAME_PREFIX, LOCAL_ACCOUNT_ID, LOCAL_REGION, MotoServer, provision
from local.dragonfly2_scheduler import ReferenceScheduler
from local.events import EventFile
from local.lambda_runtime import (
    EnvironmentPatch,
    LambdaRuntime,
    local_aws_environment,
    template_variable_names,
    union_environment,
)
from local.poller import SqsPoller
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, missing_tools, push_demo_image
from local.schedules import Clock, LocalScheduler, schedules_from_template, utc_now
from local.supernode import ReferenceSupernode
from local.template import PhysicalResource, Resolver, Template

log = logging.getLogger("local.stack")

# Downloads the local stack's reference supernode runs at once.
SUPERNODE_DOWNLOADS = 32

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"
DEFAULT_LOCAL_DIR = PROJECT_ROOT / ".local"
STATE_FILE_NAME = "stack.json"
EVENTS_FILE_NAME = "events.jsonl"
DEFAULT_LOCAL_POLLERS = 8
EVENT_BUS_PARAMETER = "EventBusName"

# What the stack starts for the functions to drive (PREHEAT_LOCAL_TARGET).
SUPERNODE_TARGET = "dragonfly1"
SCHEDULER_TARGET = "dragonfly2-scheduler"

# Template parameters the local stack gives values of its own (when the template declares them).
SUPERNODES_PARAMETER = "Supernodes"
INSECURE_REGISTRIES_PARAMETER = "InsecureRegistries"
DEFAULT_INSECURE_REGISTRIES = "localhost,127.0.0.1"  # the local registries the demo uses speak http
ALLOWED_NETWORKS_PARAMETER = "AllowedNetworks"
DEFAULT_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"
DEFAULT_DEMO_REGISTRY_PORT = 5001
DEMO_REGISTRY_INSTALL_HINT = "apt-get install docker-registry skopeo"


class LocalStack:
    """Starts (``start()`` or ``with``) and stops every part; ports 0 pick free ones.

    ``supernodes`` replaces the reference supernode (None starts one, when the template has a
    ``Supernodes`` parameter); ``parameters`` overrides template parameters; ``extra_env`` overrides or
    adds function variables; ``visibility_timeout`` replaces every queue's.

    ``schedules`` fires the template's schedules (see :mod:`local.schedules`) on a background thread, by
    ``schedule_clock`` (tests pass one they advance, or call ``scheduler.run_due`` / ``scheduler.fire``).

    ``demo_registry_port`` starts a Distribution registry on that port of 127.0.0.1 holding the demo
    image (:attr:`demo_image`); None (the default) starts none, which keeps stacks that do not need one
    fast. Without ``docker-registry`` or ``skopeo`` on PATH the stack logs how to install them and runs
    without it. Its data goes in ``registry_dir`` (kept), or in a temporary directory removed on stop.

    ``events_file`` receives the completion events of the stack's bus (see :mod:`local.events`);
    ``skip_pollers`` names functions whose queues the stack leaves to another process.
    ``target`` ``dragonfly2-scheduler`` starts a reference Dragonfly 2 scheduler instead, for the functions.

    ``api_key`` makes every route want that API key, as ``AuthMode=API_KEY`` does in AWS (see
    :mod:`local.apigateway`); None leaves the API open.

    One stack at a time per process: ``os.environ`` and moto's state belong to the whole process, so a
    second ``start()`` while one runs raises instead of letting the two corrupt each other.
    """

    _active: LocalStack | None = None
    _active_lock = threading.Lock()

    def __init__(
        self,
        template: str | Path | Template = DEFAULT_TEMPLATE,
        *,
        api_port: int = 0,
        moto_port: int = 0,
        supernode_port: int = 0,
        supernodes: Sequence[str] | None = None,
        parameters: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        visibility_timeout: int | None = None,
        cache_dir: str | Path | None = None,
        state_file: str | Path | None = None,
        demo_registry_port: int | None = None,
        registry_dir: str | Path | None = None,
        name_prefix: str = DEFAULT_NAME_PREFIX,
        poller_concurrency: int = 2,
        host: str = "127.0.0.1",
        schedules: bool = False,
        schedule_clock: Clock = utc_now,
        api_key: str | None = None,
        events_file: str | Path | None = None,
        skip_pollers: Sequence[str] = (),
        target: str = SUPERNODE_TARGET,
    ) -> None:
        if target not in (SUPERNODE_TARGET, SCHEDULER_TARGET):
            raise ValueError(
                f"PREHEAT_LOCAL_TARGET must be {SUPERNODE_TARGET} or {SCHEDULER_TARGET}, not {target!r}"
            )
        self.target = target
        self.reference_scheduler: ReferenceScheduler | None = None
        self._skip_pollers = frozenset(skip_pollers)
        self.events_file = None if events_file is None else Path(events_file)
        self.template = template if isinstance(template, Template) else Template.load(template)
        self.api_key = api_key or None
        self._api_port = api_port
        self._moto_port = moto_port
        self._supernode_port = supernode_port
        self._supernode_override = None if supernodes is None else list(supernodes)
        self._parameter_overrides = dict(parameters or {})
        self._extra_env = dict(extra_env or {})
        self._visibility_timeout = visibility_timeout
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self._state_file = None if state_file is None else Path(state_file)
        self._demo_registry_port = demo_registry_port
        self._registry_dir = None if registry_dir is None else Path(registry_dir)
        self._name_prefix = name_prefix
        self._poller_concurrency = poller_concurrency
        self._host = host
        self._schedules = schedules
        self._schedule_clock = schedule_clock

        self._moto: MotoServer | None = None
        self.supernode: ReferenceSupernode | None = None
        self._temp_cache: Path | None = None
        self.registry: RegistryServer | None = None
        self.demo_image: str | None = None
        self._wrote_state = False
        self._env_patch: EnvironmentPatch | None = None
        self._api: ApiGateway | None = None
        self._pollers: list[SqsPoller] = []
        self.scheduler: LocalScheduler | None = None
        self._event_file: EventFile | None = None
        self.runtime: LambdaRuntime | None = None
        self.resources: dict[str, PhysicalResource] = {}
        self.environment: dict[str, str] = {}
        self.supernodes: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        with LocalStack._active_lock:
            if LocalStack._active is self:
                return self
            if LocalStack._active is not None:
                raise RuntimeError("another LocalStack is running in this process; stop it first")
            LocalStack._active = self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        runtime = self.runtime = LambdaRuntime(self.template, name_prefix=self._name_prefix)
        for missing in runtime.missing_handlers():
            log.warning("no handler yet for %s (its calls will fail)", missing)
        self._moto = MotoServer(self._host, self._moto_port).start()
        # Before the supernode: stopped after it, so no download is cut off by its source going away.
        self._start_demo_registry()
        self.supernodes = self._start_supernode()
        if self.target == SCHEDULER_TARGET:
            # Through the variables: the Supernodes parameter's pattern wants http(s) URLs.
            chosen = {
                "PREHEAT_SUPERNODE_API": SCHEDULER_TARGET,
                "PREHEAT_SUPERNODES": ",".join(self.supernodes),
            }
            self._extra_env = {**chosen, **self._extra_env}
        parameters = self.template.parameter_values(self._local_parameters())
        self.resources = {
            **provision(
                self.template,
                self.moto_url,
                parameters,
                name_prefix=self._name_prefix,
                visibility_timeout=self._visibility_timeout,
            ),
            **runtime.function_resources(),
        }
        resolver = Resolver(
            self.template, parameters, self.resources, LOCAL_REGION, LOCAL_ACCOUNT_ID, self._name_prefix
        )
        self.environment = {
            **local_aws_environment(self.moto_url),
            **union_environment(self.template, resolver, self._extra_env),
        }
        if self.events_file is not None:
            # Before the first function runs, so no event misses the rule.
            self._event_file = EventFile(
                self.moto_url,
                self.events_file,
                bus=parameters.get(EVENT_BUS_PARAMETER, ""),
                name_prefix=self._name_prefix,
            ).start()
        self._env_patch = EnvironmentPatch(self.environment)
        self._env_patch.apply()
        self._api = ApiGateway(
            routes_from_template(self.template, resolver),
            runtime.invoke,
            self._host,
            self._api_port,
            api_key=self.api_key,
        ).start()
        for spec in self.template.functions.values():
            if spec.logical_id in self._skip_pollers:
                continue  # polled by a process of its own (bench.throughput's worker)
            for event in spec.sqs_events:
                queue = self.resources[event.queue]
                poller = SqsPoller(
                    spec.logical_id,
                    event,
                    queue_url=queue.ref,
                    queue_arn=queue.attributes["Arn"],
                    invoke=runtime.invoke,
                    endpoint_url=self.moto_url,
                    concurrency=self._poller_concurrency,
                )
                self._pollers.append(poller.start())
        if self._schedules:
            self._start_scheduler(runtime, resolver)
        if self._state_file is not None:
            self._write_state(self._state_file)

    def _start_scheduler(self, runtime: LambdaRuntime, resolver: Resolver) -> None:
        schedules = schedules_from_template(self.template, resolver)
        if not schedules:
            log.info("local schedules are on, but no schedule exists with these parameter values")
        self.scheduler = LocalScheduler(schedules, runtime.invoke, clock=self._schedule_clock).start()

    def _start_supernode(self) -> list[str]:
        if self._supernode_override is not None:
            return self._supernode_override
        if self.target == SCHEDULER_TARGET:
            self.reference_scheduler = ReferenceScheduler(host=self._host, port=self._supernode_port).start()
            return [self.reference_scheduler.address]
        if SUPERNODES_PARAMETER not in self.template.parameters:
            return []
        cache_dir = self._cache_dir
        if cache_dir is None:
            cache_dir = self._temp_cache = Path(tempfile.mkdtemp(prefix="preheat-supernode-"))
        # Every blob of an image is handed over at once (no registry round trip staggers them), and
        # a supernode downloads them side by side: a handful at a time would make a 100-layer image
        # wait on this stand-in, not on the service.
        self.supernode = ReferenceSupernode(
            cache_dir,
            host=self._host,
            port=self._supernode_port,
            max_concurrent_downloads=SUPERNODE_DOWNLOADS,
        ).start()
        return [self.supernode.url]

    def _start_demo_registry(self) -> None:
        if self._demo_registry_port is None:
            return
        missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
        if missing:
            # The demo is a convenience: the service itself needs neither tool, so the stack carries on.
            log.warning(
                "no demo registry: %s not installed (%s)", " and ".join(missing), DEMO_REGISTRY_INSTALL_HINT
            )
            return
        # Assigned before start(): stop() must reach a registry whose start or push failed half way.
        self.registry = RegistryServer(self._registry_dir, port=self._demo_registry_port)
        self.registry.start()
        self.demo_image = push_demo_image(self.registry)
        log.info("demo registry on %s holding %s", self.registry.url, self.demo_image)

    def _local_parameters(self) -> dict[str, str]:
        local = {
            SUPERNODES_PARAMETER: ",".join(self.supernodes) if self.target == SUPERNODE_TARGET else "",
            INSECURE_REGISTRIES_PARAMETER: DEFAULT_INSECURE_REGISTRIES,
            # Everything local listens on loopback, which the service refuses by default in AWS.
            ALLOWED_NETWORKS_PARAMETER: DEFAULT_ALLOWED_NETWORKS,
        }
        chosen = {k: v for k, v in local.items() if k in self.template.parameters and v}
        return {**chosen, **self._parameter_overrides}

    def stop(self) -> None:
        """Stops everything started, newest first; safe to call more than once."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        for poller in self._pollers:
            poller.request_stop()
        for poller in self._pollers:
            poller.stop()
        self._pollers = []
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self._event_file is not None:
            # After the functions: the events of their last tasks are written too.
            self._event_file.stop()
            self._event_file = None
        if self._env_patch is not None:
            self._env_patch.restore()
            self._env_patch = None
        self._stop_target()
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
            self.demo_image = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self._state_file is not None and self._wrote_state:
            # Only our own: a stack that failed to start must not remove a running one's state.
            self._state_file.unlink(missing_ok=True)
            self._wrote_state = False
        with LocalStack._active_lock:
            if LocalStack._active is self:
                LocalStack._active = None

    def _stop_target(self) -> None:
        if self.supernode is not None:
            self.supernode.stop()
            self.supernode = None
        if self.reference_scheduler is not None:
            self.reference_scheduler.close()
            self.reference_scheduler = None
        if self._temp_cache is not None:
            shutil.rmtree(self._temp_cache, ignore_errors=True)
            self._temp_cache = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what tests and tools read -------------------------------------------------------------

    @property
    def api_url(self) -> str:
        if self._api is None:
            raise RuntimeError("the stack is not started")
        return self._api.url

    @property
    def moto_url(self) -> str:
        if self._moto is None:
            raise RuntimeError("the stack is not started")
        return self._moto.url

    def queue_url(self, logical_id: str) -> str:
        if logical_id not in self.template.queues:
            raise KeyError(f"{logical_id} is not a queue of the template")
        return self.resources[logical_id].ref

    def table_name(self, logical_id: str) -> str:
        if logical_id not in self.template.tables:
            raise KeyError(f"{logical_id} is not a table of the template")
        return self.resources[logical_id].ref

    def invoke(self, function_logical_id: str, event: Mapping[str, Any]) -> Any:
        """``sam local invoke`` against this stack's resources."""
        if self.runtime is None:
            raise RuntimeError("the stack is not started")
        return self.runtime.invoke(function_logical_id, event)

    def state(self) -> dict[str, Any]:
        """What ``stack.json`` holds: enough for ``python -m local.invoke`` to join this stack."""
        return {
            "pid": os.getpid(),
            "template": str(self.template.path),
            "name_prefix": self._name_prefix,
            "api_url": self.api_url,
            "moto_url": self.moto_url,
            "supernodes": self.supernodes,
            "reference_supernode": None if self.supernode is None else self.supernode.url,
            "demo_registry": None if self.registry is None else self.registry.host,
            "demo_image": self.demo_image,
            "events_file": None if self.events_file is None else str(self.events_file),
            "resources": {
                logical_id: {"ref": r.ref, "attributes": dict(r.attributes)}
                for logical_id, r in self.resources.items()
            },
            "environment": self.environment,
            "schedules": (
                {}
                if self.scheduler is None
                else {name: s.describe() for name, s in self.scheduler.schedules.items()}
            ),
        }

    def _write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.state(), indent=2) + "\n", encoding="utf-8")
        partial.replace(path)  # readers never see half a file
        self._wrote_state = True


# -- command line -----------------------------------------------------------------------------------


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # moto's werkzeug logs every long poll at INFO, botocore where it found the dummy credentials.
    for noisy in ("werkzeug", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a port number, got {raw!r}") from None


def _count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"{name} must be a whole number of at least 1, got {raw!r}")
    return value


def _enabled(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() not in {"0", "false", "no", "off"}


def _parameters(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get("PREHEAT_LOCAL_PARAMETERS", "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"PREHEAT_LOCAL_PARAMETERS is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise SystemExit('PREHEAT_LOCAL_PARAMETERS must be a JSON object, e.g. {"PreheatOnEcrPush": "true"}')
    # CloudFormation parameter values are strings; a JSON list given as is becomes its JSON text.
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def stack_from_environ(environ: Mapping[str, str], template_path: Path = DEFAULT_TEMPLATE) -> LocalStack:
    local_dir = Path(environ.get("PREHEAT_LOCAL_DIR") or DEFAULT_LOCAL_DIR)
    template = Template.load(template_path)
    supernodes = [u.strip() for u in environ.get("PREHEAT_SUPERNODES", "").split(",") if u.strip()]
    visibility = environ.get("PREHEAT_LOCAL_VISIBILITY_TIMEOUT", "").strip()
    demo_registry_port = (
        _port(environ, "PREHEAT_DEMO_REGISTRY_PORT", DEFAULT_DEMO_REGISTRY_PORT)
        if _enabled(environ, "PREHEAT_DEMO_REGISTRY")
        else None
    )
    return LocalStack(
        template,
        api_port=_port(environ, "PREHEAT_API_PORT", 3000),
        moto_port=_port(environ, "PREHEAT_MOTO_PORT", 5000),
        supernode_port=_port(environ, "PREHEAT_SUPERNODE_PORT", 8002),
        supernodes=supernodes or None,
        extra_env={k: environ[k] for k in sorted(template_variable_names(template)) if k in environ},
        visibility_timeout=int(visibility) if visibility else None,
        cache_dir=local_dir / "supernode-cache",
        state_file=local_dir / STATE_FILE_NAME,
        demo_registry_port=demo_registry_port,
        registry_dir=local_dir / "registry",
        parameters=_parameters(environ) or None,
        schedules=environ.get("PREHEAT_LOCAL_SCHEDULES", "").strip().lower() in {"1", "true", "yes", "on"},
        api_key=environ.get("PREHEAT_API_KEY", "").strip() or None,
        events_file=local_dir / EVENTS_FILE_NAME,
        # A worker step watches its supernodes for up to 90 s: each poller thread holds one batch
        # (5 tasks) that long, where Lambda would start more environments.
        poller_concurrency=_count(environ, "PREHEAT_LOCAL_POLLERS", DEFAULT_LOCAL_POLLERS),
        target=environ.get("PREHEAT_LOCAL_TARGET", "").strip() or SUPERNODE_TARGET,
    )


def banner(stack: LocalStack) -> str:
    """What ``make run`` prints once everything is up: where things are, and how to preheat something."""
    url = stack.api_url
    lines = [f"Preheat API: {url}  (moto {stack.moto_url}, supernodes {','.join(stack.supernodes)})"]
    if stack.registry is not None and stack.demo_image is not None:
        where = f"registry {stack.registry.url}, data in {stack.registry.root}"
        lines.append(f"Demo image: {stack.demo_image}  ({where})")
        image = stack.demo_image
    else:
        image = "<registry>/<name>:<tag>"
    body = json.dumps({"type": "image", "url": image}, separators=(",", ":"))
    # The key itself is never printed: the shell that started the stack has it in PREHEAT_API_KEY.
    key = ' -H "x-api-key: $PREHEAT_API_KEY"' if stack.api_key else ""
    lines += [
        f"  curl -s{key} -XPOST {url}/api/preheat -d '{body}'",
        f"  curl -s{key} {url}/api/preheat/<taskId>",
        f"  curl -s{key} '{url}/api/preheat?status=FAIL&limit=20'",
        f"Console: {url}/console"
        + ("  (type the API key once; it stays in that browser tab)" if stack.api_key else ""),
    ]
    if stack.events_file is not None:
        lines.append(f"Completion events: tail -f {stack.events_file}")
    if stack.scheduler is not None:
        for name, schedule in stack.scheduler.schedules.items():
            lines.append(f"Schedule {schedule.describe()} (next {_iso(stack.scheduler.next_due(name))})")
    return "\n".join(lines)


def _iso(moment: datetime | None) -> str:
    return "never" if moment is None else moment.isoformat(timespec="seconds")


def main() -> int:
    configure_logging(os.environ.get("PREHEAT_LOCAL_LOG_LEVEL", "INFO").upper())
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    # Installed before anything starts, so a signal during start-up still ends in a clean stop.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack = stack_from_environ(os.environ)
    try:
        stack.start()
    except Exception as exc:
        log.error("the local stack could not start: %s", exc, exc_info=True)
        return 1
    try:
        print(banner(stack), flush=True)
        # A short wait in a loop, so the signal handler runs promptly.
        while not stop.wait(0.5):
            pass
    finally:
        stack.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
