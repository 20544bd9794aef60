"""Reading a Dragonfly 2 manager's job: the blob's state from the job's result (not its state alone),
and what the job says quoted safely (credentials the manager echoes scrubbed, signed URLs cut short).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from preheat.adapters.http_target import display_target
from preheat.adapters.quoting import scrub_server_text, truncate
from preheat.models import BlobState
from preheat.ports import SupernodeTask

# Cut in the middle when quoted: Go errors wrap their root cause at the end.
MAX_QUOTED_CHARS = 400
MAX_NAMED_HOSTS = 5

# Machinery task states (github.com/dragonflyoss/machinery): every one but the last two is "not yet".
_PENDING = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})
_SUCCESS = "SUCCESS"
_FAILURE = "FAILURE"


def interpret_job(  # noqa: PLR0911 - one answer per state the job and its result can be in
    target: str, job_id: str, job: Mapping[str, Any], secrets: tuple[str, ...], url: str | None = None
) -> SupernodeTask:
    """Map a job object to the blob's state, reading its result rather than trusting its state.

    ``url`` names the blob's URL in a many-URL job: it is warm when it has a success task on every
    scheduler cluster and no failure task, whatever became of the job's other URLs."""
    secrets = (*secrets, *echoed_secrets(job))
    state = str(job.get("state") or "").strip().upper()
    if state in _PENDING:
        return SupernodeTask(job_id, BlobState.PENDING)
    args = job.get("args")
    many = url is not None
    if url is None:
        url = args.get("url") if isinstance(args, dict) else None
    url = url if isinstance(url, str) else ""
    job_states = _job_states(job)
    where = f"Dragonfly 2 job {job_id} on {display_target(target)}"
    if (
        many
        and state == _FAILURE
        and not _tasks(job_states, "failure_tasks", url)
        and _clusters_without_success(job_states, url) is None
    ):
        return SupernodeTask(job_id, BlobState.SUCCESS)
    if state == _FAILURE:
        errors = _unique(
            _quote(error, secrets, url) for s in job_states if (error := str(s.get("error") or "").strip())
        )
        failures = _describe_failures(_tasks(job_states, "failure_tasks", url), secrets, url)
        reason = "; ".join([*errors, failures] if failures else errors) or "no reason given"
        return SupernodeTask(job_id, BlobState.FAILED, f"{where} failed: {reason}")
    if state == _SUCCESS:
        failed = _tasks(job_states, "failure_tasks", url)
        if failed:
            return SupernodeTask(
                job_id,
                BlobState.FAILED,
                f"{where} reported SUCCESS but the download failed on "
                f"{_describe_failures(failed, secrets, url)}",
            )
        missing = _clusters_without_success(job_states, url)
        if missing is not None:
            scope = args.get("scope") if isinstance(args, dict) else None
            hint = (
                " (a single_seed_peer preheat leaves a failed download out of the result: the scheduler's "
                "log says why)"
                if scope in (None, "", "single_seed_peer")
                else ""
            )
            return SupernodeTask(
                job_id,
                BlobState.FAILED,
                f"{where} reported SUCCESS but {missing} lists no seed peer that downloaded the file{hint}",
            )
        return SupernodeTask(job_id, BlobState.SUCCESS)
    # An unknown state would otherwise be polled until the task deadline; fail it now, loudly.
    shown = truncate(state, MAX_QUOTED_CHARS, keep_end=True)
    return SupernodeTask(job_id, BlobState.FAILED, f"{where} is in an unknown state {shown!r}")


def _job_states(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    result = job.get("result")
    states = result.get("job_states") if isinstance(result, dict) else None
    return [state for state in states if isinstance(state, dict)] if isinstance(states, list) else []


def _results(job_state: Mapping[str, Any]) -> list[dict[str, Any]]:
    results = job_state.get("results")
    return [result for result in results if isinstance(result, dict)] if isinstance(results, list) else []


def _tasks(job_states: list[dict[str, Any]], key: str, url: str) -> list[dict[str, Any]]:
    """The ``key`` tasks of every result that are about ``url`` (a task naming no URL counts: the job
    holds one URL only)."""
    found = []
    for job_state in job_states:
        for result in _results(job_state):
            tasks = result.get(key)
            for task in tasks if isinstance(tasks, list) else []:
                if isinstance(task, dict) and _same_url(task.get("url"), url):
                    found.append(task)
    return found


def _clusters_without_success(job_states: list[dict[str, Any]], url: str) -> str | None:
    """What lacks a success task for ``url`` (each scheduler cluster of the job must have one), or None."""
    if not job_states:
        return "its result"
    lacking: list[str] = []
    for index, job_state in enumerate(job_states, start=1):
        if _tasks([job_state], "success_tasks", url):
            continue
        clusters = [r["scheduler_cluster_id"] for r in _results(job_state) if "scheduler_cluster_id" in r]
        lacking.append(f"scheduler cluster {clusters[0]}" if clusters else f"job state {index}")
    if not lacking:
        return None
    return ", ".join(lacking[:MAX_NAMED_HOSTS]) + (" and more" if len(lacking) > MAX_NAMED_HOSTS else "")


def _same_url(candidate: Any, url: str) -> bool:
    # A task naming no URL counts for every URL of its job.
    return not candidate or not url or candidate == url


def _describe_failures(tasks: list[dict[str, Any]], secrets: tuple[str, ...], url: str) -> str:
    """``host (ip): description`` for the first few failure tasks."""
    if not tasks:
        return ""
    parts: list[str] = []
    for task in tasks[:MAX_NAMED_HOSTS]:
        hostname = str(task.get("hostname") or "").strip() or "an unnamed host"
        ip = str(task.get("ip") or "").strip()
        description = str(task.get("description") or "").strip() or "no description"
        host = f"{hostname} ({ip})" if ip and ip != hostname else hostname
        parts.append(f"{_quote(host, secrets, url)}: {_quote(description, secrets, url)}")
    more = len(tasks) - MAX_NAMED_HOSTS
    return "; ".join(parts) + (f"; and {more} more host(s)" if more > 0 else "")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def echoed_secrets(job: Any) -> tuple[str, ...]:
    """Credentials a manager echoes back in a job's ``args`` (it stores them with the job)."""
    args = job.get("args") if isinstance(job, dict) else None
    if not isinstance(args, dict):
        return ()
    found: list[str] = []
    headers = args.get("headers")
    if isinstance(headers, dict):
        found.extend(value for value in headers.values() if isinstance(value, str))
    password = args.get("password")
    if isinstance(password, str):
        found.append(password)
    return tuple(found)


def _quote(text: str, secrets: tuple[str, ...], url: str = "") -> str:
    """Text from a manager, fit to be quoted: scrubbed, then cut."""
    return truncate(scrub_job_text(text, secrets, url), MAX_QUOTED_CHARS, keep_end=True)


def scrub_job_text(text: str, secrets: tuple[str, ...], url: str = "") -> str:
    """``text`` without credentials in any form (``secrets`` raw, each word, a Basic header's user and
    password, and any Bearer/Basic credential or JWT), with the job's URL shown without its query and
    every other URL's signature redacted. Replacing happens before any cut, which could leave half a
    secret that no longer matches."""
    if url and "?" in url:
        text = text.replace(url, url.split("?", 1)[0])
    return scrub_server_text(text, secrets)
