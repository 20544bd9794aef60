"""Storage-signature parameters: the query parameters that sign a storage URL.

A supernode leaves them out when it derives a task id (its ``filter``), so that two signatures of
one blob are one download.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

# Query parameters that sign a storage URL, grouped by scheme: a group counts only when its marker
# is in the URL, so that short names (``sp``, ``se``) are not dropped from ordinary URLs. The
# supernode leaves these out when it derives the task id, so two signatures of one blob are one
# download. Names are compared ignoring case; prefixes are vendor headers hoisted into the query.
SIGNATURE_PARAM_GROUPS: dict[str, frozenset[str]] = {
    # S3 SigV2, CloudFront, GCS V2, Alibaba OSS V1, Huawei OBS V1.
    "signature": frozenset(
        [
            "signature",
            "expires",
            "policy",
            "key-pair-id",
            "awsaccesskeyid",
            "googleaccessid",
            "ossaccesskeyid",
            "accesskeyid",
            "security-token",
        ]
    ),
    # Azure Blob SAS (GHCR's pkg-containers, ACR).
    "sig": frozenset(
        [
            "sig",
            "se",
            "st",
            "sp",
            "sv",
            "sr",
            "spr",
            "sip",
            "si",
            "ss",
            "srt",
            "sdd",
            "skoid",
            "sktid",
            "skt",
            "ske",
            "sks",
            "skv",
            "ses",
        ]
    ),
    # Tencent COS.
    "q-signature": frozenset(
        [
            "q-sign-algorithm",
            "q-ak",
            "q-sign-time",
            "q-key-time",
            "q-header-list",
            "q-url-param-list",
            "q-signature",
        ]
    ),
    # Docker Hub's Cloudflare storage: ``verify=<expiry>-<signature>``.
    "verify": frozenset({"verify"}),
}
SIGNATURE_PARAM_PREFIXES = ("x-amz-", "x-goog-", "x-oss-", "x-obs-")


def signature_params(url: str) -> tuple[str, ...]:
    """The names of the signature query parameters in ``url``, as spelled there, in order."""
    names: list[str] = []
    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in names:
            names.append(name)
    present = {name.lower() for name in names}
    signing = {
        member
        for marker, members in SIGNATURE_PARAM_GROUPS.items()
        if marker in present
        for member in members
    }
    return tuple(
        name for name in names if name.lower() in signing or name.lower().startswith(SIGNATURE_PARAM_PREFIXES)
    )
