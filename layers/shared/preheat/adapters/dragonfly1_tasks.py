"""Verify and evict on Dragonfly 1 supernodes: the Go supernode's task API.

``GET /api/v1/tasks/{id}`` (``getTaskInfo``) says whether the supernode's CDN holds a task
(``cdnStatus`` SUCCESS: warm there). A task it does not have answers HTTP 500 with "data not found"
in its message, not 404, in every Go release from v1.0.0 to v1.0.6: that, and only that, reads as
"not there". Any other failure (no connection, a timeout, another 5xx, a route the supernode does
not serve) is "unknown", never "gone".

``DELETE /api/v1/tasks/{id}`` drops the cached task, answering 200 even for one it does not have,
but keeps the preheat record: a later ``POST /preheats`` of the URL answers 208 and downloads
nothing. ``DELETE /preheats/{id}`` removes the record too, so that a later preheat warms again.

The supernode is the peer: each blob has one peer per target, named by the target's host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlsplit

from preheat.adapters.http import RequestError
from preheat.adapters.http_target import display_target, json_body
from preheat.adapters.quoting import failure_reason, scrub_server_text, truncate
from preheat.errors import PreheatError
from preheat.models import BlobProgress
from preheat.ports import EVICTED, Holding, PeerSeen

if TYPE_CHECKING:
    from preheat.adapters.dragonfly1 import Dragonfly1Driver

# Blobs asked about at once: a 100-layer task on 3 supernodes is 300 GETs (the pool keeps 128).
MAX_PARALLEL = 32
NOT_FOUND_TEXT = "data not found"
_PENDING = frozenset({"WAITING", "RUNNING"})

T = TypeVar("T")


def in_parallel(work: Callable[[BlobProgress], T], blobs: Sequence[BlobProgress]) -> list[T]:
    if len(blobs) <= 1:
        return [work(blob) for blob in blobs]
    with ThreadPoolExecutor(min(len(blobs), MAX_PARALLEL), thread_name_prefix="df1-life") as pool:
        return list(pool.map(work, blobs))


def task_id_of(blob: BlobProgress) -> str:
    """The supernode's own id for the blob (the preheat's), else the one a node computes."""
    return blob.supernode_task_id or blob.node_task_id or ""


def peer_of(target: str, finished: bool | None) -> PeerSeen:
    parts = urlsplit(target)
    host = parts.hostname or display_target(target)
    return PeerSeen(host=f"{host}:{parts.port}" if parts.port else host, ip=host, finished=finished)


def holding(driver: Dragonfly1Driver, blob: BlobProgress) -> Holding:
    """What ``blob.target`` says of the blob now (see the module's notes)."""
    target, task_id = blob.target, task_id_of(blob)
    if not task_id:
        return Holding(warm=False, error="no task id recorded for this blob")
    path = f"/api/v1/tasks/{quote(task_id, safe='')}"
    timeout = driver.settings.supernode_timeout_seconds
    reason = ""
    for attempt in range(1, driver.retry.attempts + 1):
        if attempt > 1:
            driver.sleep(driver.retry.delay(attempt - 1))
        try:
            response = driver.http.request("GET", f"{target}{path}", timeout=timeout)
        except RequestError as exc:
            reason = failure_reason(exc, timeout)
            continue
        with response:
            answer = json_body(response)
            said = _said(answer, response.text)
            code = response.status_code
        if code == 500 and NOT_FOUND_TEXT in said.lower():
            return Holding(peers=(), warm=False)
        if code == 200 and isinstance(answer, dict):
            return _from_info(target, answer)
        if code < 500 and code != 429:
            # A supernode without the task API (the Java one) or another refusal: unknown.
            return _unknown(target, f"HTTP {code}: {truncate(said) or '(empty body)'}")
        reason = f"HTTP {code}: {truncate(said)}" if said else f"HTTP {code}"
    return _unknown(target, reason, unreachable=True)


def evict(driver: Dragonfly1Driver, blob: BlobProgress) -> str:
    """Drop the blob's cached task, then its preheat record (so that a preheat warms it again)."""
    task_id = task_id_of(blob)
    if not task_id:
        return "no task id recorded for this blob"
    quoted = quote(task_id, safe="")
    try:
        for path, what, fine in (
            (f"/api/v1/tasks/{quoted}", f"delete task {task_id}", (200, 204)),
            # 404: no record (never one, or deleted before): nothing keeps a preheat from warming.
            (f"/preheats/{quoted}", f"delete the preheat record {task_id}", (200, 204, 404)),
        ):
            response = driver.send("DELETE", blob.target, path, what)
            with response:
                if response.status_code not in fine:
                    said = _said(json_body(response), response.text)
                    return (
                        f"supernode {display_target(blob.target)} refused to {what}: "
                        f"HTTP {response.status_code}: {truncate(said) or '(empty body)'}"
                    )
    except PreheatError as exc:
        return str(exc)
    return EVICTED


def _from_info(target: str, answer: dict[str, object]) -> Holding:
    status = str(answer.get("cdnStatus", "")).strip().upper()
    if status == "SUCCESS":
        return Holding(peers=(peer_of(target, True),), warm=True)
    if status in _PENDING:
        return Holding(peers=(peer_of(target, False),), warm=False)
    # FAILED, SOURCE_ERROR: the supernode knows the task but holds no data of it.
    return Holding(peers=(), warm=False, error=f"cdnStatus {truncate(status) or '(none)'}")


def _unknown(target: str, reason: str, unreachable: bool = False) -> Holding:
    return Holding(
        peers=(peer_of(target, None),),
        warm=None,
        unreachable=target if unreachable else None,
        error=f"supernode {display_target(target)} did not say: {reason}",
    )


def _said(answer: object, text: str) -> str:
    """What the supernode said (``message``), scrubbed of anything credential-shaped."""
    if isinstance(answer, dict):
        for key in ("message", "msg", "error"):
            value = answer.get(key)
            if isinstance(value, str) and value.strip():
                return scrub_server_text(value.strip(), ())
    return scrub_server_text(text.strip()[:500], ())
