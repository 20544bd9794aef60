"""The task id a Dragonfly node computes for a URL, in each target's algorithm.

A preheat is worth something only when a node's later download lands on the task it created, so the
status answer shows, per blob, the id a node will compute: an operator can compare it with what
Dragonfly's own tools list (``dfget``'s logs, a Dragonfly 2 ``get_task`` job).

- Dragonfly 1 (``supernode/daemon/mgr/task/manager_util.go``, ``generateTaskID``): sha256 over a
  fixed key, the URL without its ``filter`` query parameters, the identifier (when set), and the
  key again. Nodes' dfget uses no filter and no identifier unless the cluster configures them.
- Dragonfly 2 (``dragonfly-client-util/src/id_generator``, URL-based ids): sha256 over the URL
  without its filtered query parameters (the remaining ones sorted by name), then the tag, the
  application and the piece length when set, then the task type ``STANDARD``. The URL is
  canonicalised only when some parameter is filtered: then the ``&``-separated pairs (a pair
  holding ``;`` dropped, as Go's ``url.ParseQuery`` drops it) are sorted by name, values of one name
  keeping their order, and escaped as Go's ``url.QueryEscape``; the fragment stays.
- Dragonfly 2 with ``enableTaskIDBasedBlobDigest`` (``PREHEAT_DRAGONFLY2_TASK_IDS=blob-digest``): a
  registry blob URL's id is its digest's hex; any other URL keeps its URL-based id.
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
    sorted by name and escaped as Go's ``url.QueryEscape`` does. ValueError for a URL that does not
    parse as an absolute one."""
    if not filtered:
        return url
    parts = urlsplit(url)
    if not parts.scheme:
        # Both upstreams fail to parse it (``:error_url`` in their vectors): no node computes an id.
        raise ValueError(f"{url!r:.80} is not an absolute URL")
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


# An OCI blob URL as Dragonfly 2 recognises one (dragonfly-client-util ``digest::BLOB_URL_REGEX``,
# dragonfly ``pkg/idgen`` ``blobURLRegexp``): matched on the whole URL text, not a parsed path, so
# whatever follows ``/blobs/`` up to a ``?`` (a fragment included) is the digest.
_BLOB_URL = re.compile(r"^(.*)://(.*)/v2/(.*)/blobs/([^?]+)(?:\?.*)?\Z")
# The algorithms both upstreams accept for a blob-digest task id, with the length each needs.
# (Go's idgen also takes a crc32 of any length; the Rust node, which computes the id a pull lands
# on, takes 10 characters, and so do we.)
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128, "crc32": 10}
_HEX = re.compile(r"[0-9a-fA-F]+\Z")


def is_blob_url(url: str) -> bool:
    """Whether a Dragonfly 2 node with ``enableTaskIDBasedBlobDigest`` takes ``url`` for an OCI blob
    (and so derives its task id from the digest, or refuses it)."""
    return _BLOB_URL.match(url) is not None


def dragonfly2_blob_digest_task_id(url: str) -> str | None:
    """The task id a Dragonfly 2 node with ``enableTaskIDBasedBlobDigest`` gives a registry blob URL:
    the digest's hex alone, whatever the host, repository or query (``TaskIDParameter::BlobDigestBased``
    in dragonfly-client, ``idgen.TaskIDV2ByBlobDigest`` in Go).

    None for a URL that is not a blob's: such a node gives it a URL-based id. ValueError for a blob
    URL whose digest it cannot take (an unknown algorithm, a wrong length, not hex): the node refuses
    that download outright (``InvalidArgument``) rather than falling back to the URL."""
    match = _BLOB_URL.match(url)
    if match is None:
        return None
    algorithm, sep, encoded = match.group(4).partition(":")
    length = _DIGEST_LENGTHS.get(algorithm)
    if not sep or length is None or len(encoded) != length or not _HEX.match(encoded):
        raise ValueError(f"a Dragonfly 2 node refuses the blob URL's digest {match.group(4)!r:.80}")
    return encoded


def dragonfly2_node_task_id(
    url: str,
    task_ids: str = "url",
    filtered_query_params: Sequence[str] = DRAGONFLY2_DEFAULT_FILTERED_QUERY_PARAMS,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
) -> str:
    """The id a Dragonfly 2 node gives ``url`` under ``PREHEAT_DRAGONFLY2_TASK_IDS`` (``url`` or
    ``blob-digest``), as dfdaemon's download handler picks: the digest for a blob URL when the
    cluster derives ids from digests, else the URL-based id. ValueError as for
    :func:`dragonfly2_blob_digest_task_id`."""
    if task_ids == "blob-digest":
        digest_id = dragonfly2_blob_digest_task_id(url)
        if digest_id is not None:
            return digest_id
    return dragonfly2_task_id(url, filtered_query_params, tag, application, piece_length)
