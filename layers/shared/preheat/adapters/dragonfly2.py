"""The Dragonfly 2 driver: a manager's open API (``GET /healthy``, ``POST /oapi/v1/jobs``,
``GET /oapi/v1/jobs/{id}``), authenticated with a personal access token.

The worker has already resolved every blob to its real download URL, so each blob becomes a ``file``
preheat job of its own (``create``), or one URL of a job that carries many (``create_batch``,
``args.urls``). The job's ``state`` alone is not the truth: the manager reports SUCCESS when every
scheduler task returned, even if the seed peers failed the download (``all_seed_peers`` and
``all_peers`` list those in ``failure_tasks``; ``single_seed_peer`` with the ``urls`` form drops a
failed URL from the result altogether). So a SUCCESS job counts as warm only when every scheduler
cluster's result has a success task for the blob's URL and no result has a failure task for it.

``scheduler_cluster_ids`` is left out of the create body when ``PREHEAT_DRAGONFLY2_CLUSTERS`` is
empty: the manager then preheats in every scheduler cluster that has an active scheduler (an empty
list means the same to it; Harbor sends ``null``). ``filtered_query_params`` is left out when
neither the deployment (``PREHEAT_DRAGONFLY2_FILTERED_QUERY_PARAMS``) nor the blob names one, so
that the manager applies its default list (the S3/GCS/OSS/OBS/COS signature parameters and ``ns``),
the same one Dragonfly peers use to compute task ids.

The token, blob headers and the ``headers``/``password`` a manager echoes back in a job's ``args`` are
credentials: no message this module builds quotes them, and text from a manager is scrubbed of them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from preheat.adapters import dragonfly2_lifecycle
from preheat.adapters.dragonfly2_jobs import MAX_QUOTED_CHARS, echoed_secrets, interpret_job, scrub_job_text
from preheat.adapters.expiring_cache import ExpiringCache
from preheat.adapters.http import HttpClient, Response
from preheat.adapters.http_target import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_SECONDS,
    HttpTargetDriver,
    Throttled,
    display_target,
    json_body,
)
from preheat.adapters.quoting import truncate
from preheat.errors import PermanentFailure, RateLimited, TransientFailure
from preheat.models import Blob, BlobProgress, BlobState, Targeting
from preheat.ports import Holding, SupernodeTask
from preheat.retry import RetryPolicy
from preheat.settings import Settings
from preheat.task_ids import DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS, dragonfly2_node_task_id

SECRET_MAX_AGE_SECONDS = 300
# One job carries at most this many URLs: a 1000-layer image in one job, and a create body of some
# 150 KiB, well inside MySQL 5.7's default max_allowed_packet (4 MiB) for the job's stored args and
# the machinery message that carries them to the schedulers. An index of many platforms is split.
MAX_URLS_PER_JOB = 1000
# A many-URL job is read once per look for all its URLs: answers this fresh are reused.
JOB_ANSWER_REUSE_SECONDS = 0.1
MAX_CACHED_JOBS = 64
# Job rate limit (manager default: 10 creates a second per cluster, bursts of 10): waits start at
# half a second, double to 8 s, and give up on this step after a minute (the worker's timeout is
# 120 s; the step is then redelivered, and the task's deadline still bounds it).
RATE_LIMIT_BASE_DELAY = 0.5
RATE_LIMIT_MAX_DELAY = 8.0
RATE_LIMIT_PATIENCE_SECONDS = 60.0
RATE_LIMIT_POLICY = RetryPolicy(
    attempts=1,  # bounded by the patience, not by a count
    backoff_seconds=RATE_LIMIT_BASE_DELAY,
    max_delay_seconds=RATE_LIMIT_MAX_DELAY,
    retry_after_cap_seconds=RATE_LIMIT_MAX_DELAY,
)

JOBS_PATH = "/oapi/v1/jobs"
UNCONFIGURED_MESSAGE = (
    "no Dragonfly 2 manager token is configured: set PREHEAT_DRAGONFLY2_TOKEN or "
    "PREHEAT_DRAGONFLY2_TOKEN_SECRET (a Secrets Manager secret holding the token, bare or as "
    '{"token": "..."})'
)

# Secrets Manager error codes that another try will not fix.
_PERMANENT_SECRET_ERRORS = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "DecryptionFailure",
        "InvalidRequestException",
        "InvalidParameterException",
        "UnrecognizedClientException",
    }
)
_ERROR_CODE_RE = re.compile(r"An error occurred \((\w+)\)")

SecretReader = Callable[[str], str | bytes]
# A job as the manager answered it, or the blob's verdict when there was none to read.
_JobAnswer = dict[str, Any] | SupernodeTask


def read_secret(name: str) -> str | bytes:
    """The secret's value through powertools parameters, cached for five minutes per container."""
    # Imported on demand: it imports boto3, which nothing else here needs.
    from aws_lambda_powertools.utilities.parameters import get_secret  # noqa: PLC0415

    value: str | bytes = get_secret(name, max_age=SECRET_MAX_AGE_SECONDS)
    return value


class Dragonfly2Driver(HttpTargetDriver):
    """The ``SupernodeDriver`` for Dragonfly 2 managers (``settings.supernodes`` are their base URLs).

    ``create`` answers the job id (as a string) and its mapped state; ``status`` maps the job's
    ``state`` and reads its ``result`` (see the module notes). A job the manager no longer knows
    (404: finished jobs are removed after 6 h) is FAILED. 401/403 and other 4xx are PermanentFailure;
    connection errors, timeouts, 429 and 5xx are retried ``attempts`` times, ``backoff_seconds``
    doubling between tries, then raised as TransientFailure. Retrying a create is safe: a duplicate
    job for the same URL joins the seed peer's task for it rather than downloading twice.

    The token is ``settings.dragonfly2_token``, else the Secrets Manager secret named by
    ``settings.dragonfly2_token_secret``, read on first use through ``secret_reader`` (powertools
    caches it for five minutes, so a rotated token is picked up without a redeploy).
    """

    SUBJECT = "Dragonfly 2 manager"
    # /healthy needs no token, so a health check never reads the secret.
    PING_PATH = "/healthy"
    PING_THREAD_PREFIX = "df2-ping"

    def __init__(
        self,
        settings: Settings,
        http: HttpClient | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        secret_reader: SecretReader | None = None,
        rate_limit_patience: float = RATE_LIMIT_PATIENCE_SECONDS,
    ) -> None:
        super().__init__(settings, http, attempts=attempts, backoff_seconds=backoff_seconds, sleep=sleep)
        self._secret_reader = secret_reader if secret_reader is not None else read_secret
        self._rate_limit_patience = rate_limit_patience
        self.rate_limited = 0  # 429 answers waited out, for tests and benchmarks
        # A warm Lambda serves task after task: the least recently read jobs are dropped (at worst,
        # one more read of a job still being watched).
        self._answers: ExpiringCache[tuple[str, str], _JobAnswer] = ExpiringCache(
            time.monotonic, MAX_CACHED_JOBS
        )
        # The get_task jobs a verify created, reused by the next verifies (see dragonfly2_lifecycle).
        self.lifecycle_jobs = dragonfly2_lifecycle.Jobs()

    # -- jobs --------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return MAX_URLS_PER_JOB if self._settings.dragonfly2_job_urls == "batch" else 1

    def _filtered_query_params(self, blob: Blob) -> tuple[str, ...]:
        """What the seed peers leave out of the URL for its task id: the configured list (or,
        when unset, the client's default list) plus the blob's own signature parameters."""
        configured = self._settings.dragonfly2_filtered_query_params
        return tuple(dict.fromkeys((*(configured or DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS), *blob.filter)))

    def node_task_id(self, blob: Blob) -> str:
        """The id a node gives the blob under ``PREHEAT_DRAGONFLY2_TASK_IDS``; empty when a node
        refuses the URL (a blob URL whose digest it cannot take), so that no id is shown."""
        settings = self._settings
        try:
            return dragonfly2_node_task_id(
                blob.url,
                settings.dragonfly2_task_ids,
                self._filtered_query_params(blob),
                settings.dragonfly2_tag,
                settings.dragonfly2_application,
                settings.dragonfly2_piece_length,
            )
        except ValueError:
            return ""

    def _body(self, blobs: Sequence[Blob]) -> dict[str, Any]:
        first = blobs[0]
        args: dict[str, Any] = {"type": "file"}
        if len(blobs) == 1:
            args["url"] = first.url
        else:
            args["urls"] = [blob.url for blob in blobs]
        if first.headers:
            args["headers"] = first.headers.reveal()
        # Left out when nothing is to be filtered, so that the manager applies its default list;
        # a URL's own signature parameters are named (the default list covers most, not all).
        named = (*self._settings.dragonfly2_filtered_query_params, *first.filter)
        if named:
            args["filtered_query_params"] = "&".join(dict.fromkeys(named))
        if self._settings.dragonfly2_tag:
            args["tag"] = self._settings.dragonfly2_tag
        if self._settings.dragonfly2_application:
            args["application"] = self._settings.dragonfly2_application
        if self._settings.dragonfly2_piece_length is not None:
            args["piece_length"] = self._settings.dragonfly2_piece_length
        if self._settings.dragonfly2_task_ids == "blob-digest":
            # The seed peers then create each blob's task under its digest, the id the nodes of such
            # a cluster ask for (dragonfly PR #4975); without it they would warm a task no pull finds.
            args["enable_task_id_based_blob_digest"] = True
        targeting, clusters = job_targeting(self._settings, first.targeting)
        args.update(targeting)
        body: dict[str, Any] = {"type": "preheat", "args": args}
        if clusters:
            body["scheduler_cluster_ids"] = clusters
        return body

    def create_batch(self, target: str, blobs: Sequence[Blob]) -> list[SupernodeTask]:
        """One job for every blob (``args.urls``, managers v2.2.3 and later); each blob's task id is
        ``<job id>#<its index in the job>``, which :meth:`status` reads that URL's result by.
        Blobs are grouped by the headers, filter and targeting they need: a job carries one of each."""
        if len(blobs) <= 1 or self.batch_size == 1:
            return [self.create(target, blob) for blob in blobs]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, blob in enumerate(blobs):
            key = (tuple(sorted(blob.headers.reveal().items())), blob.filter, blob.targeting)
            groups.setdefault(key, []).append(index)
        answers: list[SupernodeTask | None] = [None] * len(blobs)
        for indexes in groups.values():
            for start in range(0, len(indexes), self.batch_size):
                chunk = indexes[start : start + self.batch_size]
                if len(chunk) == 1:
                    answers[chunk[0]] = self.create(target, blobs[chunk[0]])
                    continue
                job_id, job, secrets = self._create_job(target, [blobs[i] for i in chunk])
                for position, index in enumerate(chunk):
                    answers[index] = interpret_job(
                        target, f"{job_id}#{position}", job, secrets, url=blobs[index].url
                    )
        return [answer for answer in answers if answer is not None]

    def create(self, target: str, blob: Blob) -> SupernodeTask:
        job_id, answer, secrets = self._create_job(target, [blob])
        # A new job is PENDING; should a manager answer with one already finished, read it as status does.
        return interpret_job(target, job_id, answer, secrets)

    def _create_job(self, target: str, blobs: Sequence[Blob]) -> tuple[str, dict[str, Any], tuple[str, ...]]:
        blob = blobs[0]
        what = blob.label if len(blobs) == 1 else f"{len(blobs)} blobs ({blob.label}, ...)"
        body = self._body(blobs)
        token = self._token()
        secrets = (token, *blob.headers.values())
        response = self._send("POST", target, JOBS_PATH, f"accept the preheat of {what}", token, json=body)
        with response:
            code = response.status_code
            answer = json_body(response)
            if code in (401, 403):
                raise PermanentFailure(_refused(target, code, _message(answer, response, secrets)))
            if code not in (200, 201):
                raise PermanentFailure(
                    f"Dragonfly 2 manager {display_target(target)} refused the preheat of {what}: "
                    f"HTTP {code}: {_message(answer, response, secrets)}"
                )
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 0:
            raise PermanentFailure(
                f"Dragonfly 2 manager {display_target(target)} answered HTTP {code} to the preheat of "
                f"{what} without a job id: {_message(answer, response, secrets)}"
            )
        assert isinstance(answer, dict)
        return str(job_id), answer, secrets

    def status(self, target: str, supernode_task_id: str) -> SupernodeTask:
        job_part, sep, index_part = supernode_task_id.partition("#")
        if sep and _is_number(job_part) and _is_number(index_part):
            return self._url_status(target, supernode_task_id, job_part, int(index_part))
        if not _is_number(supernode_task_id):
            # Say so rather than ask: e.g. a Dragonfly 1 task id left over from before a switch of API.
            return SupernodeTask(
                supernode_task_id,
                BlobState.FAILED,
                f"{supernode_task_id!r:.80} is not a Dragonfly 2 job id (PREHEAT_SUPERNODE_API changed?)",
            )
        token = self._token()
        answer = self._read_job(target, supernode_task_id, token)
        if isinstance(answer, SupernodeTask):
            return answer
        return interpret_job(target, supernode_task_id, answer, (token,))

    def _url_status(self, target: str, task_id: str, job_id: str, index: int) -> SupernodeTask:
        """One URL of a many-URL job. The job is read once for all its URLs: the worker looks at
        every blob of a round at once, and an answer at most JOB_ANSWER_REUSE_SECONDS old serves."""
        answer = self._job_answer(target, job_id)
        if isinstance(answer, SupernodeTask):
            return replace(answer, task_id=task_id)
        args = answer.get("args")
        urls = args.get("urls") if isinstance(args, dict) else None
        if not isinstance(urls, list) or index >= len(urls) or not isinstance(urls[index], str):
            return SupernodeTask(
                task_id,
                BlobState.FAILED,
                f"Dragonfly 2 job {job_id} on {display_target(target)} does not list URL {index} of its "
                "'urls' (a manager older than v2.2.3? set PREHEAT_DRAGONFLY2_JOB_URLS=single)",
            )
        return interpret_job(target, task_id, answer, (self._token(),), url=urls[index])

    def _job_answer(self, target: str, job_id: str) -> _JobAnswer:
        # A read that fails stores nothing and holds no lock: the next look reads the job again.
        return self._answers.load(
            (target, job_id),
            lambda: (self._read_job(target, job_id, self._token()), JOB_ANSWER_REUSE_SECONDS),
        )

    def _read_job(self, target: str, job_id: str, token: str) -> _JobAnswer:
        """The job object, or the blob's verdict when there is none to read."""
        response = self._send(
            "GET", target, f"{JOBS_PATH}/{job_id}", f"answer the status of job {job_id}", token
        )
        with response:
            code = response.status_code
            answer = json_body(response)
            if code == 404:
                return SupernodeTask(
                    job_id,
                    BlobState.FAILED,
                    f"Dragonfly 2 manager {display_target(target)} no longer knows job {job_id} "
                    "(finished jobs are removed after 6 h)",
                )
            if code in (401, 403):
                raise PermanentFailure(_refused(target, code, _message(answer, response, (token,))))
            if code != 200 or not isinstance(answer, dict):
                raise PermanentFailure(
                    f"Dragonfly 2 manager {display_target(target)} answered HTTP {code} to the status of job "
                    f"{job_id}: {_message(answer, response, (token, *echoed_secrets(answer)))}"
                )
        return answer

    # -- verify and evict (get_task and delete_task jobs: see dragonfly2_lifecycle) -----------------

    def holders(self, blobs: Sequence[BlobProgress], targeting: Targeting) -> list[Holding]:
        return dragonfly2_lifecycle.holders(self, blobs, targeting)

    def job_call(
        self, method: str, target: str, path: str, what: str, body: Any = None
    ) -> tuple[int, Any, str]:
        """A job API request with the token and the driver's retries (and, for a create, its
        rate-limit patience): the status, the JSON answer, and what it said, scrubbed of credentials.
        PermanentFailure when the token is refused."""
        token = self._token()
        response = self._send(
            method, target, path, what, token, **({"json": body} if body is not None else {})
        )
        with response:
            code, answer = response.status_code, json_body(response)
            message = _message(answer, response, (token, *echoed_secrets(answer)))
        if code in (401, 403):
            raise PermanentFailure(_refused(target, code, message))
        return code, answer, message

    def evict(self, blobs: Sequence[BlobProgress]) -> list[str]:
        return dragonfly2_lifecycle.evict(self, blobs)

    # -- plumbing ----------------------------------------------------------------------------------

    def _token(self) -> str:
        if self._settings.dragonfly2_token:
            return self._settings.dragonfly2_token
        name = self._settings.dragonfly2_token_secret
        if not name:
            raise PermanentFailure(UNCONFIGURED_MESSAGE)
        try:
            value = self._secret_reader(name)
        except Exception as exc:
            code = _secret_error_code(exc)
            message = f"cannot read the Dragonfly 2 manager token from secret {name!r}: {code}"
            if code in _PERMANENT_SECRET_ERRORS:
                raise PermanentFailure(message) from None
            # Throttling, a network error, a Secrets Manager 5xx: the next delivery may fare better.
            raise TransientFailure(message) from None
        token = _token_from_secret(value)
        if not token:
            raise PermanentFailure(
                f"secret {name!r} holds no Dragonfly 2 manager token: store the bare token or "
                '{"token": "<personal access token>"}'
            )
        return token

    def _send(self, method: str, target: str, path: str, what: str, token: str, **kwargs: Any) -> Response:
        """``_send_with_retries`` with the token as a bearer: see there for what is retried.

        A create answered 429 (the manager's per-cluster job rate limit) is a reason to wait and
        try again, with exponential backoff and full jitter (workers limited together do not come
        back together), for up to ``rate_limit_patience`` seconds: then RateLimited, which retries
        the step, never a failed blob."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        waited = 0.0
        number = 0
        while True:
            try:
                return self._send_with_retries(
                    method, target, path, what, headers=headers, rate_limited=method == "POST", **kwargs
                )
            except Throttled as exc:
                number += 1
                self.rate_limited += 1
                delay = RATE_LIMIT_POLICY.delay(number, exc.retry_after)
                if waited + delay > self._rate_limit_patience:
                    raise RateLimited(
                        f"{self.SUBJECT} {display_target(target)} kept answering 429 ({exc.reason}) to the "
                        f"preheat of {what.removeprefix('accept the preheat of ')} for {waited:.0f}s: "
                        "its job rate limit; the step is retried"
                    ) from None
                waited += delay
                self._sleep(delay)


def job_targeting(settings: Settings, targeting: Targeting) -> tuple[dict[str, Any], list[int]]:
    """Where a job goes: its ``args``' ``scope`` and ``ips``/``count``/``percentage``, and its
    ``scheduler_cluster_ids`` (empty: every cluster). The request's targeting wins over the
    deployment's ``PREHEAT_DRAGONFLY2_SCOPE`` and ``PREHEAT_DRAGONFLY2_CLUSTERS``."""
    args: dict[str, Any] = {"scope": targeting.scope or settings.dragonfly2_scope}
    if targeting.ips:
        args["ips"] = list(targeting.ips)
    if targeting.count:
        args["count"] = targeting.count
    if targeting.percentage:
        args["percentage"] = targeting.percentage
    return args, list(targeting.cluster_ids or settings.dragonfly2_clusters)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


# -- reading answers -------------------------------------------------------------------------------


def _message(answer: Any, response: Response, secrets: tuple[str, ...]) -> str:
    """What the manager said: ``message`` (errors), ``errors`` (validation), else the start of the body."""
    text = ""
    if isinstance(answer, dict):
        for key in ("message", "errors", "error", "msg"):
            value = answer.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
            if value:
                text = json.dumps(value)
                break
    text = text or response.text.strip()
    text = scrub_job_text(text, (*secrets, *echoed_secrets(answer)))
    return truncate(text, MAX_QUOTED_CHARS, keep_end=True) if text else "(empty body)"


def _refused(target: str, code: int, message: str) -> str:
    return (
        f"Dragonfly 2 manager {display_target(target)} refused the token (HTTP {code}: {message}): "
        "check that the personal access token is active, unexpired and has the 'job' scope"
    )


def _token_from_secret(value: str | bytes | None) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if text.startswith("{"):
        try:
            decoded = json.loads(text)
        except ValueError:
            return ""
        token = decoded.get("token") if isinstance(decoded, dict) else None
        return token.strip() if isinstance(token, str) else ""
    return text


def _secret_error_code(exc: BaseException) -> str:
    """The AWS error code behind a failed secret read (powertools wraps it in GetParameterError,
    chained implicitly), or the exception's type: never its text, which a caller may not expect."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if isinstance(code, str) and code:
                return code
        seen = seen.__cause__ or seen.__context__
    match = _ERROR_CODE_RE.search(str(exc))
    return match.group(1) if match else type(exc).__name__
