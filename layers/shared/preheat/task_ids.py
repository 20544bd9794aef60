"""The task id a Dragonfly node computes for a URL, in each target's algorithm.

A preheat is worth something only when a node's later download lands on the task it created, so the
status answer shows, per blob, the id a node will compute: an operator can compare it with what
Dragonfly's own tools list (``dfget``'s logs, a Dragonfly 2 ``get_task`` job).

- Dragonfly 1 (``supernode/daemon/mgr/task/manager_util.go``, ``generateTaskID``): sha256 over a
  fixed key, the URL without its ``filter`` query parameters, the identifier (when set), and the
  key again. Nodes' dfget uses no filter and no identifier unless the cluster configures them.
- Dragonfly 2 (``dragonfly-client-util/src/id_generator``, URL-based ids): sha256 over the URL
  without its filtered query parameters (the remaining ones sorted by name), then the tag, the
  application and the piece length when set, then the task type ``STANDARD``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit

# The key the Dragonfly 1 supernode wraps every task id's material in.
DRAGONFLY1_KEY = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"
DRAGONFLY2_TASK_TYPE = "STANDARD"

# The Dragonfly 2 client's default filtered query parameters (S3, GCS, OSS, OBS, COS signature
# parameters, and containerd's ``ns``): what a node leaves out unless its proxy rules say otherwise.
DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
)


def without_params(url: str, names: Sequence[str]) -> str:
    """``url`` without the query parameters named in ``names``; the others keep their order."""
    base, sep, query = url.partition("?")
    if not sep or not names:
        return url
    dropped = set(names)
    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] not in dropped]
    return f"{base}?{'&'.join(kept)}" if kept else base


def dragonfly1_task_id(url: str, filter_params: Sequence[str] = (), identifier: str = "") -> str:
    return hashlib.sha256(
        f"{DRAGONFLY1_KEY}{without_params(url, filter_params)}{identifier}{DRAGONFLY1_KEY}".encode()
    ).hexdigest()


def _dragonfly2_url(url: str, filtered: Sequence[str]) -> str:
    """The URL as the Dragonfly 2 client canonicalises it: filtered parameters dropped, the rest
    sorted by name and escaped as Go's ``url.QueryEscape`` does."""
    if not filtered:
        return url
    parts = urlsplit(url)
    dropped = set(filtered)
    pairs = [
        (name, value)
        for segment in parts.query.split("&")
        if segment and ";" not in segment
        for name, value in parse_qsl(segment, keep_blank_values=True)
        if name not in dropped
    ]
    pairs.sort(key=lambda pair: pair[0])
    query = "&".join(f"{quote_plus(name, safe='~')}={quote_plus(value, safe='~')}" for name, value in pairs)
    canonical = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, parts.fragment))
    if (parts.path in ("", "/")) and not query and not parts.fragment:
        canonical = canonical.rstrip("/")
    return canonical


def dragonfly2_task_id(
    url: str,
    filtered_query_params: Sequence[str] = DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
) -> str:
    material = _dragonfly2_url(url, filtered_query_params) + tag + application
    if piece_length is not None:
        material += str(piece_length)
    return hashlib.sha256((material + DRAGONFLY2_TASK_TYPE).encode()).hexdigest()


# A registry blob URL's path: /v2/<name>/blobs/<algorithm>:<hex>.
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(?:sha256:([0-9a-f]{64})|sha512:([0-9a-f]{128}))$")


def dragonfly2_blob_digest_task_id(url: str) -> str | None:
    """The task id a Dragonfly 2 node with ``enableTaskIDBasedBlobDigest`` gives a registry blob URL:
    the digest's hex alone, whatever the host, repository or query (``TaskIDParameter::BlobDigestBased``
    in dragonfly-client, ``idgen.TaskIDV2ByBlobDigest`` in Go). None for a URL that is not a blob's:
    such a node gives it a URL-based id."""
    match = _BLOB_PATH.match(urlsplit(url).path)
    if match is None:
        return None
    return match.group(1) or match.group(2)
