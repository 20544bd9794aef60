"""How the fake Dragonfly 2 manager (``local/dragonfly2_manager.py``) reads a create: the body validated
as ``manager/handlers/job.go`` binds ``CreatePreheatJobRequest``, the manager's defaults filled in,
and the task id a node computes for each URL of the job (``preheat.task_ids``: one algorithm for the
service and its fakes, checked against the upstream vectors)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from preheat.task_ids import DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS, dragonfly2_node_task_id

SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
DEFAULT_SCOPE = SCOPES[0]
DEFAULT_CONCURRENT_COUNT = 50
DEFAULT_TIMEOUT_NS = 30 * 60 * 1_000_000_000
# The default the manager fills in (internal pkg/net/http RawDefaultFilteredQueryParams: S3, GCS,
# OSS, OBS, COS signature params and "ns"), the very list nodes filter by: the service's. (The
# manager's own string names OSS's and OBS's "Signature" and "Expires" twice, which filters nothing more.)
DEFAULT_FILTERED_QUERY_PARAMS = "&".join(DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS)
# dragonfly PR #4975: the seed peers create a registry blob's task under its digest.
BLOB_DIGEST_ARG = "enable_task_id_based_blob_digest"


class Invalid(Exception):
    """A body the manager's binding rejects: 422 ``{"errors": ...}``."""


class NotFound(Exception):
    """404 ``{"message": ...}``, as the manager answers a wrapped gorm ErrRecordNotFound."""


def _field_error(struct_field: str, tag: str) -> str:
    """The text gin's validator gives a binding failure."""
    name = struct_field.rsplit(".", 1)[-1]
    return f"Key: '{struct_field}' Error:Field validation for '{name}' failed on the '{tag}' tag"


def node_task_id(url: str, args: Mapping[str, Any]) -> str:
    """The task id a Dragonfly 2 node computes for ``url`` with the job's ``tag``, ``application``,
    ``piece_length`` and ``filtered_query_params``, by its digest when the job's args carry
    ``enable_task_id_based_blob_digest``. ValueError when a node refuses the URL."""
    filtered = tuple(name for name in str(args.get("filtered_query_params") or "").split("&") if name)
    piece_length = args.get("piece_length")
    return dragonfly2_node_task_id(
        url,
        "blob-digest" if args.get(BLOB_DIGEST_ARG) is True else "url",
        filtered,
        str(args.get("tag") or ""),
        str(args.get("application") or ""),
        piece_length if isinstance(piece_length, int) else None,
    )


# The jobs that read or delete a task on every peer (manager/types/job.go GetTaskArgs,
# DeleteTaskArgs): by ``task_id``, or by ``url`` (the id then computed as a node does).
TASK_JOB_TYPES = ("get_task", "delete_task")
DEFAULT_GET_TASK_CONCURRENT_PEER_COUNT = 500


@dataclass(frozen=True)
class PreheatJobRequest:
    urls: tuple[str, ...]
    headers: dict[str, str]
    filters: tuple[str, ...]
    cluster_ids: tuple[int, ...]  # empty: every cluster
    args: dict[str, Any]  # as stored and answered, defaults filled in
    # "preheat", or one of TASK_JOB_TYPES (whose task is ``task_id``; no URL is downloaded).
    kind: str = "preheat"
    task_id: str = ""


def parse_create(body: Any, known_clusters: Iterable[int]) -> PreheatJobRequest:
    """Validate a create body as the manager binds ``CreatePreheatJobRequest``."""
    if not isinstance(body, dict):
        raise Invalid("json: cannot unmarshal the body into Go value of type types.CreateJobRequest")
    job_type = body.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise Invalid(_field_error("CreateJobRequest.Type", "required"))
    if job_type in TASK_JOB_TYPES:
        return _task_job(
            job_type, body.get("args"), _cluster_ids(body.get("scheduler_cluster_ids"), known_clusters)
        )
    if job_type != "preheat":
        raise Invalid(
            f"this fake manager runs preheat, get_task and delete_task jobs only, not {job_type!r:.40}"
        )
    args = _args(body.get("args"))
    urls = _urls(args)
    headers = _headers(args.get("headers"))
    filters = tuple(name for name in str(args["filtered_query_params"]).split("&") if name)
    return PreheatJobRequest(
        urls=urls,
        headers=headers,
        filters=filters,
        cluster_ids=_cluster_ids(body.get("scheduler_cluster_ids"), known_clusters),
        args=args,
    )


def _task_job(job_type: str, raw: Any, cluster_ids: tuple[int, ...]) -> PreheatJobRequest:
    """A get_task or delete_task job's args, as the manager binds them: ``task_id`` or ``url``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Invalid("json: cannot unmarshal args into Go struct field of type types.GetTaskArgs")
    args = dict(raw)
    for key in ("task_id", "url", "tag", "application", "filtered_query_params"):
        if args.get(key) is not None and not isinstance(args[key], str):
            raise Invalid(f"json: cannot unmarshal {key} into Go struct field of type string")
    if not args.get("filtered_query_params"):
        args["filtered_query_params"] = DEFAULT_FILTERED_QUERY_PARAMS
    args.setdefault("timeout", DEFAULT_TIMEOUT_NS)
    if job_type == "get_task":
        args.setdefault("concurrent_peer_count", DEFAULT_GET_TASK_CONCURRENT_PEER_COUNT)
    task_id = str(args.get("task_id") or "")
    if not task_id and args.get("url"):
        try:
            task_id = node_task_id(str(args["url"]), args)
        except ValueError as exc:
            raise Invalid(f"invalid params: {exc}") from None
    if not task_id:
        raise Invalid("invalid params: task_id or url is required")
    return PreheatJobRequest((), {}, (), cluster_ids, args, kind=job_type, task_id=task_id)


def _args(raw: Any) -> dict[str, Any]:
    """``args`` checked, with the manager's defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Invalid("json: cannot unmarshal args into Go struct field of type types.PreheatArgs")
    args = dict(raw)
    preheat_type = args.get("type")
    if not isinstance(preheat_type, str) or not preheat_type:
        raise Invalid(_field_error("CreatePreheatJobRequest.Args.Type", "required"))
    if preheat_type not in ("image", "file"):
        raise Invalid(_field_error("CreatePreheatJobRequest.Args.Type", "oneof"))
    if preheat_type == "image":
        raise Invalid(
            "image preheat isn't supported by this fake manager: send one 'file' job per blob "
            "(the Preheat service resolves images itself)"
        )
    for key in ("filtered_query_params", "scope", "tag", "application", "username", "password", "platform"):
        if args.get(key) is not None and not isinstance(args[key], str):
            raise Invalid(f"json: cannot unmarshal {key} into Go struct field of type string")
    if args.get(BLOB_DIGEST_ARG) is not None and not isinstance(args[BLOB_DIGEST_ARG], bool):
        raise Invalid(f"json: cannot unmarshal {BLOB_DIGEST_ARG} into Go struct field of type bool")
    _check_peers(args)
    defaults: dict[str, Any] = {
        "scope": DEFAULT_SCOPE,
        "concurrent_count": DEFAULT_CONCURRENT_COUNT,
        "timeout": DEFAULT_TIMEOUT_NS,
        "filtered_query_params": DEFAULT_FILTERED_QUERY_PARAMS,
    }
    for key, value in defaults.items():
        if not args.get(key):
            args[key] = value
    return args


def _check_peers(args: Mapping[str, Any]) -> None:
    """The manager's bindings of ``scope`` and which peers (``ips``, ``count``, ``percentage``)."""
    scope = args.get("scope")
    if scope and scope not in ("single_seed_peer", "all_seed_peers", "all_peers"):
        raise Invalid(_field_error("CreatePreheatJobRequest.Args.Scope", "oneof"))
    ips, count, percentage = args.get("ips"), args.get("count"), args.get("percentage")
    if ips is not None:
        if not isinstance(ips, list) or not 1 <= len(ips) <= 100:
            raise Invalid(_field_error("CreatePreheatJobRequest.Args.IPs", "max"))
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except (TypeError, ValueError):
                raise Invalid(_field_error("CreatePreheatJobRequest.Args.IPs[0]", "ip")) from None
    for name, value, most in (("Count", count, 200), ("Percentage", percentage, 100)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most
        ):
            raise Invalid(_field_error(f"CreatePreheatJobRequest.Args.{name}", "lte"))
    if sum(value is not None for value in (ips, count, percentage)) > 1:
        raise Invalid("only one of ips, count and percentage can be given")


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise Invalid("json: cannot unmarshal headers into Go struct field of type map[string]string")
    return dict(raw)


def _cluster_ids(raw: Any, known_clusters: Iterable[int]) -> tuple[int, ...]:
    """The requested scheduler cluster ids (empty: every cluster); an unknown one is a 404."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw
    ):
        raise Invalid("json: cannot unmarshal scheduler_cluster_ids into Go struct field of type []uint")
    known = set(known_clusters)
    for cluster_id in raw:
        if cluster_id not in known:
            raise NotFound(f"scheduler cluster id {cluster_id}: record not found")
    return tuple(dict.fromkeys(raw))


def _urls(args: dict[str, Any]) -> tuple[str, ...]:
    """``url`` and ``urls`` combined, as the manager does for file preheats."""
    urls: list[str] = []
    url = args.get("url")
    if url is not None and not isinstance(url, str):
        raise Invalid("json: cannot unmarshal url into Go struct field of type string")
    raw_urls = args.get("urls")
    if raw_urls is not None and (
        not isinstance(raw_urls, list) or not all(isinstance(u, str) for u in raw_urls)
    ):
        raise Invalid("json: cannot unmarshal urls into Go struct field of type []string")
    for raw in [*(raw_urls or []), *([url] if url else [])]:
        candidate = raw.strip()
        parts = urlsplit(candidate)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(_field_error("PreheatRequest.URL", "url"))
        if candidate not in urls:
            urls.append(candidate)
    if not urls:
        raise Invalid("invalid params: url or urls is required")
    return tuple(urls)
