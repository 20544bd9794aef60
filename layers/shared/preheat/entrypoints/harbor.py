"""The two provider APIs Harbor's P2P preheat drivers speak, over the same domain service as the
spec's API:

* Dragonfly 1 supernode style (Harbor 2.1 to 2.11): ``GET /_ping``, ``POST /preheats``,
  ``GET /preheats/{id}``;
* Dragonfly 2 manager style (Harbor 2.12 and later): ``GET /healthy``, ``POST /oapi/v1/jobs``,
  ``GET /oapi/v1/jobs/{id}``.

Unlike the spec's API these answer with real HTTP status codes (400 bad body, 404 unknown id, 500
when a dependency fails), as the servers they imitate do and as Harbor expects.

A Dragonfly 2 job id is a JSON integer (Harbor decodes it into a Go ``int``), while tasks are
UUIDs: the domain service gives each job's task an integer alias (see ``PreheatService.job_id_for``).
The spec's API is unchanged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from preheat import bootstrap
from preheat.entrypoints.resolver import build_resolver_with, json_body, submit
from preheat.errors import InvalidRequest, TaskNotFound
from preheat.models import BlobState, ImageReference, PreheatType, Task, TaskStatus, is_task_id, isoformat
from preheat.observability import tracer


def _json(status: int, body: Any) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


def _object_body(event: BaseProxyEvent) -> dict[str, Any]:
    body = json_body(event)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _headers(raw: Any, name: str) -> Any:
    """Harbor's ``headers``; a JSON null (Go's nil map) is none. Validated by PreheatRequest."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{name}' must be a JSON object of header names to string values")
    return raw


# --- Dragonfly 1 supernode style ---------------------------------------------------------------

DF1_STATUS = {TaskStatus.SUCCESS: "SUCCESS", TaskStatus.FAIL: "FAILED"}


def dragonfly1_answer(task: Task) -> dict[str, Any]:
    """``GET /preheats/{id}``: a RUNNING task is WAITING until its blobs were dispatched."""
    if task.status is TaskStatus.RUNNING:
        status = "RUNNING" if task.dispatched else "WAITING"
    else:
        status = DF1_STATUS[task.status]
    return {
        "ID": task.task_id,
        "status": status,
        # Strings, as Harbor's driver reads them; "" where Go would leave a zero value.
        "startTime": isoformat(task.created_at) or "",
        "finishTime": isoformat(task.finished_at) or "",
        "errorMsg": (task.message or "") if task.status is TaskStatus.FAIL else "",
    }


def dragonfly1_routes() -> Router:
    router = Router()

    @router.get("/_ping")
    def ping() -> Response[str]:
        return Response(status_code=200, content_type="text/plain", body="OK")

    @router.post("/preheats")
    @tracer.capture_method(capture_response=False)
    def create() -> Response[str]:
        # Harbor also sends image, tag, digest and extra_attrs (and the supernode's own filter and
        # identifier exist): accepted and ignored, the URL says it all.
        body = _object_body(router.current_event)
        task = submit(
            {
                "type": body.get("type"),
                "url": body.get("url"),
                "header": _headers(body.get("headers"), "headers"),
            }
        )
        return _json(201, {"ID": task.task_id})

    @router.get("/preheats/<task_id>")
    @tracer.capture_method(capture_response=False)
    def status(task_id: str) -> Response[str]:
        if not is_task_id(task_id):
            raise TaskNotFound(f"preheat task {task_id[:80]!r} not found")
        return _json(200, dragonfly1_answer(bootstrap.preheat_service().get(task_id)))

    return router


def _dragonfly1_error(status: int, message: str) -> Response[str]:
    # The supernode's error body.
    return _json(status, {"code": status, "message": message})


# --- Dragonfly 2 manager style -----------------------------------------------------------------

DF2_STATE = {TaskStatus.RUNNING: "PENDING", TaskStatus.SUCCESS: "SUCCESS", TaskStatus.FAIL: "FAILURE"}


def _blob_url(task: Task, label: str) -> str:
    if task.type is not PreheatType.IMAGE or not label.startswith(("sha256:", "sha512:")):
        return label
    image = ImageReference.parse(task.url)
    return image.blob_url(label, insecure=task.url.startswith("http://"))


def dragonfly2_job(task: Task, job_id: int) -> dict[str, Any]:
    """The job object as the Dragonfly 2 manager answers it (and as Harbor's driver decodes it)."""
    state = DF2_STATE[task.status]
    success: list[dict[str, str]] = []
    failure: list[dict[str, str]] = []
    for blob in task.blobs:
        host = urlsplit(blob.target).hostname or blob.target
        entry = {
            "task_id": blob.supernode_task_id or "",
            "url": _blob_url(task, blob.label),
            "hostname": host,
            "ip": host if host.replace(".", "").isdigit() or ":" in host else "",
        }
        if blob.state is BlobState.SUCCESS:
            success.append(entry)
        elif blob.state is BlobState.FAILED:
            failure.append({**entry, "description": blob.error or "failed"})
    created = isoformat(task.created_at)
    updated = isoformat(task.finished_at) or created
    args: dict[str, Any] = {"type": task.type.value, "url": task.url}  # never the headers
    if task.platforms:
        args["platform"] = ",".join(task.platforms)
    job_state = {
        "task_uuid": task.task_id,
        "task_name": "preheat",
        "state": state,
        "results": [{"success_tasks": success, "failure_tasks": failure, "scheduler_cluster_id": 0}],
        "error": (task.message or "failed") if task.status is TaskStatus.FAIL else "",
        "created_at": created,
        "ttl": 0,
    }
    return {
        "id": job_id,
        "created_at": created,
        "updated_at": updated,
        "task_id": task.task_id,
        "bio": "",
        "type": "preheat",
        "state": state,
        "args": args,
        "result": {
            "group_uuid": task.task_id,
            "state": state,
            "created_at": created,
            "updated_at": updated,
            "job_states": [job_state],
        },
    }


def _job_request(body: dict[str, Any]) -> dict[str, Any]:
    """The job body Harbor (or any manager client) sends, as a PreheatRequest body."""
    if body.get("type") != "preheat":
        raise InvalidRequest(f"'type' must be \"preheat\", got {str(body.get('type'))[:32]!r}")
    clusters = body.get("scheduler_cluster_ids")
    if clusters is not None and (
        not isinstance(clusters, list) or not all(isinstance(c, int) and c >= 0 for c in clusters)
    ):
        raise InvalidRequest("'scheduler_cluster_ids' must be null or an array of cluster ids")
    args = body.get("args")
    if not isinstance(args, dict):
        raise InvalidRequest("'args' must be a JSON object with at least 'type' and 'url'")
    # scope, tag, filtered_query_params, concurrent_count, timeout, ...: accepted, this service
    # decides those itself.
    return {
        "type": args.get("type"),
        "url": args.get("url"),
        "header": _headers(args.get("headers"), "args.headers"),
        "platform": args.get("platform") or None,
    }


def dragonfly2_routes() -> Router:
    router = Router()

    @router.get("/healthy")
    def healthy() -> Response[str]:
        return Response(status_code=200, content_type="text/plain", body="OK")

    @router.post("/oapi/v1/jobs")
    @tracer.capture_method(capture_response=False)
    def create() -> Response[str]:
        task = submit(_job_request(_object_body(router.current_event)))
        return _json(200, dragonfly2_job(task, bootstrap.preheat_service().job_id_for(task)))

    @router.get("/oapi/v1/jobs/<job_id>")
    @tracer.capture_method(capture_response=False)
    def status(job_id: str) -> Response[str]:
        task = bootstrap.preheat_service().get_job(job_id)
        return _json(200, dragonfly2_job(task, int(job_id)))

    return router


def _dragonfly2_error(status: int, message: str) -> Response[str]:
    # The manager's error body.
    return _json(status, {"message": message})


# --- Resolvers ---------------------------------------------------------------------------------


def build_dragonfly1_resolver() -> APIGatewayRestResolver:
    return build_resolver_with(dragonfly1_routes(), _dragonfly1_error)


def build_dragonfly2_resolver() -> APIGatewayRestResolver:
    return build_resolver_with(dragonfly2_routes(), _dragonfly2_error)
