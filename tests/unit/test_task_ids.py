"""The task id a node computes, in each target's algorithm, checked against vectors from Dragonfly's
own tests (dragonfly-client-util's id generator) and against the algorithm written out here."""

from __future__ import annotations

import hashlib

import pytest

from preheat.settings import Settings
from preheat.task_ids import (
    dragonfly1_task_id,
    dragonfly2_blob_digest_task_id,
    dragonfly2_node_task_id,
    dragonfly2_task_id,
    is_blob_url,
)

KEY = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"


@pytest.mark.parametrize(
    ("url", "filtered", "tag", "application", "piece_length", "expected"),
    [
        # Vectors of dragonfly-client-util/src/id_generator/mod.rs (should_generate_task_id).
        (
            "https://example.com",
            (),
            "foo",
            "bar",
            None,
            "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca",
        ),
        (
            "https://example.com",
            (),
            "foo",
            "",
            None,
            "3c3f230ef9f191dd2821510346a7bc138e4894bee9aee184ba250a3040701d2a",
        ),
        (
            "https://example.com",
            (),
            "",
            "bar",
            None,
            "c9f9261b7305c24371244f9f149f5d4589ed601348fdf22d7f6f4b10658fdba2",
        ),
        (
            "https://example.com",
            (),
            "",
            "",
            1024,
            "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8",
        ),
        (
            "https://example.com?foo=foo&bar=bar",
            ("foo", "bar"),
            "",
            "",
            None,
            "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776",
        ),
        (
            "https://example.com/file.txt?z=9&b=2&a=1",
            ("z",),
            "foo",
            "bar",
            None,
            "8b3f6e9b9b8fe20903bced565cfd1d0aaef354a4c17573f0c2c1979210443f9d",
        ),
    ],
)
def test_dragonfly2_ids_match_the_clients_own_vectors(
    url: str, filtered: tuple[str, ...], tag: str, application: str, piece_length: int | None, expected: str
) -> None:
    assert dragonfly2_task_id(url, filtered, tag, application, piece_length) == expected


# Vectors of dragonfly-client-util/src/id_generator/mod.rs (task_id_hashes_the_canonical_url_with_options,
# 2026, after the URL canonicalisation moved to dragonfly-client-util/src/url/mod.rs) and of dragonfly
# pkg/idgen/task_id_test.go (TestTaskIDV2ByURLBased): both assert these same ids. Repeated keys, escaping,
# ";" and a fragment, taken as data.
URL_BASED_VECTORS = [
    # url, filtered_query_params, tag, application, piece_length, id
    (
        "https://example.com",
        (),
        "",
        "",
        1024,
        "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8",
    ),
    (
        "https://example.com/file.txt?b=2&a=1&b=1",
        ("c",),
        "",
        "",
        None,
        "7c8801d0596be5e8f9449d5c4af23866c72fe5205119c0e5912981f3b16a37aa",
    ),
    (
        "https://example.com/file.txt?k=a b&m=x*y&n=c~d",
        ("none",),
        "",
        "",
        1024,
        "6196a6846023f6d3c1e4d30f6c86f3d4186e4c664a33e5692b0e04e49b26a9af",
    ),
    (
        "https://example.com/file.txt?a=1&b=2",
        ("a", "b"),
        "foo",
        "",
        None,
        "c8f4b41117329d54af920010394f6f607bac707e933ab2f18d372e3dd4c7fcb3",
    ),
    (
        "https://example.com/file.txt?b=2&a=1",
        (),
        "",
        "",
        None,
        "980ee327518ccc5a7c30703e1a2232e8ba9047b39431f940636c85b6146f8b9a",
    ),
    # From the cross-language consistency vectors the Go and Rust request SDKs share
    # (client-request/go and client-request/rust/tests/consistency.rs, TestTaskID).
    (
        "https://example.com/file.txt?a=1;x&b=2",
        ("none",),
        "",
        "",
        None,
        "370933e9d7ab42b3ed90287213cd5f8def6091c8606da5b2dc79436061b06c34",
    ),
    (
        "http://www.xx.yy/path?u=f&x=y&m=z&x=s#size",
        ("x", "m"),
        "",
        "",
        None,
        "3570c3c808f06fd250a7a60634b9275d72c56edc248576508bb06264c2c65825",
    ),
    (
        "https://example.com/file.txt?Expires=e1&Signature=s1&foo=bar",
        ("Expires", "Signature"),
        "tag1",
        "app1",
        4194304,
        "2a0c4c713d7f2f65f36b78b79c4b78a6bf5d5f67b76730ed13485d3271482f1c",
    ),
    (
        "http://registry.example.com/v2/library/ubuntu/manifests/latest",
        (),
        "",
        "",
        None,
        "0b6500b31c7eea2929393e154299bc81ebbb613c24fa7f5f33e893d585f4d629",
    ),
]


@pytest.mark.parametrize(
    ("url", "filtered", "tag", "application", "piece_length", "expected"), URL_BASED_VECTORS
)
def test_dragonfly2_url_based_ids_match_the_upstream_vectors(
    url: str, filtered: tuple[str, ...], tag: str, application: str, piece_length: int | None, expected: str
) -> None:
    assert dragonfly2_task_id(url, filtered, tag, application, piece_length) == expected
    # Under blob-digest a URL that is not a blob's keeps its URL-based id.
    assert dragonfly2_node_task_id(url, "blob-digest", filtered, tag, application, piece_length) == expected


# The canonical URLs of dragonfly pkg/net/url/url_test.go (TestFilterQuery) and dragonfly-client-util
# src/url/mod.rs (should_filter_query_params): the id is sha256 over the canonical URL and the task type.
CANONICAL_URL_VECTORS = [
    # url, filtered_query_params, canonical URL
    ("https://example.com/file.txt?z=9&b=2&a=1", ("z",), "https://example.com/file.txt?a=1&b=2"),
    ("https://example.com/file.txt?b=2&a=1&b=1", ("c",), "https://example.com/file.txt?a=1&b=2&b=1"),
    ("https://example.com?foo=foo", ("foo",), "https://example.com"),
    (
        "https://example.com/file.txt?k=a b&m=x*y&n=c~d",
        ("none",),
        "https://example.com/file.txt?k=a+b&m=x%2Ay&n=c~d",
    ),
    ("http://www.xx.yy/path?u=f&x=y&m=z&x=s#size", ("x", "m"), "http://www.xx.yy/path?u=f#size"),
    ("http://www.xx.yy/path?u=f&x=y&m=z&x=s#size", (), "http://www.xx.yy/path?u=f&x=y&m=z&x=s#size"),
    ("https://example.com/file.txt?a=1;x&b=2", ("none",), "https://example.com/file.txt?b=2"),
]


@pytest.mark.parametrize(("url", "filtered", "canonical"), CANONICAL_URL_VECTORS)
def test_dragonfly2_canonical_urls_match_the_upstream_vectors(
    url: str, filtered: tuple[str, ...], canonical: str
) -> None:
    assert dragonfly2_task_id(url, filtered) == hashlib.sha256(f"{canonical}STANDARD".encode()).hexdigest()


def test_a_url_that_does_not_parse_is_refused_when_filtering() -> None:
    # Both upstreams: FilterQueryParams(":error_url", ["x", "m"]) is an error.
    with pytest.raises(ValueError, match="not an absolute URL"):
        dragonfly2_task_id(":error_url", ("x", "m"))


SHA256_HEX = "b2c366cce7e68013d5441c6326d5a3e1b12aeb5ed58564d0fd3fa089bc29cb6e"
SHA512_HEX = (
    "94381a28e8c039fedfa78de025158a068226c3ccd041b22c2c8e73fc993584e9"
    "b167d9ae32bc8b372c66701c808ab134e0768c8f16b9a3e61eec1ccf8faa9db8"
)


# dragonfly-client-util/src/digest/mod.rs (test_extract_from_blob_url), id_generator/mod.rs
# (task_id_extracts_oci_digests_or_rejects_invalid_urls), dragonfly pkg/idgen/task_id_test.go
# (TestTaskIDV2ByBlobDigest, TestIsBlobURL).
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://registry.example.com/v2/library/ubuntu/blobs/sha256:{SHA256_HEX}", SHA256_HEX),
        (f"https://registry.example.com/v2/myorg/myrepo/blobs/sha512:{SHA512_HEX}", SHA512_HEX),
        (f"https://registry.io/v2/org/team/project/blobs/sha256:{SHA256_HEX}", SHA256_HEX),
        (f"http://localhost:5000/v2/myrepo/blobs/sha256:{SHA256_HEX}", SHA256_HEX),
        (f"https://index.docker.io/v2/library/alpine/blobs/sha256:{SHA256_HEX}?ns=docker.io", SHA256_HEX),
        (f"http://localhost:5000/v2/myrepo/blobs/sha256:{SHA256_HEX}?ns=docker.io", SHA256_HEX),
        (f"http://localhost:5000/v2/myrepo/blobs/sha256:{SHA256_HEX}?id=12345", SHA256_HEX),
        (
            "https://registry.example.com/v2/myorg/myrepo/blobs/sha256:"
            "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
            "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
        ),
    ],
)
def test_blob_digest_ids_match_the_upstream_vectors(url: str, expected: str) -> None:
    assert is_blob_url(url)
    assert dragonfly2_blob_digest_task_id(url) == expected
    assert dragonfly2_node_task_id(url, "blob-digest") == expected
    # Under the default mode the same URL has its URL-based id.
    assert dragonfly2_node_task_id(url, "url") == dragonfly2_task_id(url)


# Not blob URLs at all (dragonfly-client-util digest test_extract_from_blob_url's invalid_urls, Go
# TestIsBlobURL): a node gives them a URL-based id.
@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/file.txt",
        "https://registry.example.com/v2/library/ubuntu/manifests/latest",
        "http://registry.example.com/blobs/sha256:abc",
        "http://registry.example.com/v2/repo/manifests/sha256:abc",
        "registry.example.com/v2/repo/blobs/sha256:abc",
        "http://registry.example.com/v2/blobs/sha256:abc",
        "",
        "not-a-url",
    ],
)
def test_urls_that_are_not_blobs_have_no_digest_id(url: str) -> None:
    assert not is_blob_url(url)
    assert dragonfly2_blob_digest_task_id(url) is None


# Blob URLs whose digest a node refuses (the download fails with InvalidArgument, no fallback):
# a digest too short, an unsupported algorithm, none at all (the upstream vectors), and a fragment,
# which the upstream pattern reads as part of the digest.
@pytest.mark.parametrize(
    "url",
    [
        "http://registry.example.com/v2/library/ubuntu/blobs/sha256:abc",
        "http://registry.example.com/v2/library/ubuntu/blobs/md5:8a04994a666b4e4b20a2fd9e5a44f44c",
        "http://registry.example.com/v2/repo/blobs/invalid-digest",
        f"http://registry.example.com/v2/library/ubuntu/blobs/sha256:{SHA256_HEX}#frag",
    ],
)
def test_blob_urls_with_a_digest_a_node_cannot_take_are_refused(url: str) -> None:
    assert is_blob_url(url)
    with pytest.raises(ValueError, match="refuses the blob URL's digest"):
        dragonfly2_blob_digest_task_id(url)
    with pytest.raises(ValueError, match="refuses the blob URL's digest"):
        dragonfly2_node_task_id(url, "blob-digest")
    # A cluster on URL-based ids never looks at the digest.
    assert dragonfly2_node_task_id(url, "url") == dragonfly2_task_id(url)


def test_a_registry_blob_url_out_of_the_box() -> None:
    url = "https://index.docker.io/v2/library/nginx/blobs/sha256:" + "a" * 64
    assert dragonfly2_task_id(url) == hashlib.sha256(f"{url}STANDARD".encode()).hexdigest()
    assert dragonfly1_task_id(url) == hashlib.sha256(f"{KEY}{url}{KEY}".encode()).hexdigest()


def test_dragonfly1_leaves_out_the_filter_and_adds_the_identifier() -> None:
    signed = "https://s3.example.com/b/k?X-Amz-Signature=abc&versionId=2"
    expected = hashlib.sha256(f"{KEY}https://s3.example.com/b/k?versionId=2team{KEY}".encode()).hexdigest()
    assert dragonfly1_task_id(signed, ("X-Amz-Signature",), "team") == expected


def test_dragonfly2_signatures_of_one_object_are_one_task() -> None:
    first = "https://s3.example.com/b/k?X-Amz-Signature=abc&X-Amz-Date=1"
    second = "https://s3.example.com/b/k?X-Amz-Date=2&X-Amz-Signature=def"
    assert dragonfly2_task_id(first) == dragonfly2_task_id(second)


def test_the_identity_settings_default_to_what_a_node_uses_and_parse() -> None:
    default = Settings.from_env({})
    assert default.layer_urls == "registry"
    assert default.dragonfly2_job_urls == "batch"
    assert (default.dragonfly1_filter, default.dragonfly1_identifier) == ((), "")
    assert (default.dragonfly2_tag, default.dragonfly2_application, default.dragonfly2_piece_length) == (
        "",
        "",
        None,
    )
    assert default.dragonfly2_filtered_query_params == ()
    configured = Settings.from_env(
        {
            "PREHEAT_LAYER_URLS": "storage",
            "PREHEAT_DRAGONFLY1_FILTER": "Signature&Expires",
            "PREHEAT_DRAGONFLY1_IDENTIFIER": "team",
            "PREHEAT_DRAGONFLY2_TAG": "t",
            "PREHEAT_DRAGONFLY2_APPLICATION": "a",
            "PREHEAT_DRAGONFLY2_PIECE_LENGTH": "4194304",
            "PREHEAT_DRAGONFLY2_FILTERED_QUERY_PARAMS": "X-Amz-Signature&ns",
            "PREHEAT_DRAGONFLY2_JOB_URLS": "single",
        }
    )
    assert configured.layer_urls == "storage"
    assert configured.dragonfly1_filter == ("Signature", "Expires")
    assert configured.dragonfly2_piece_length == 4194304
    assert configured.dragonfly2_filtered_query_params == ("X-Amz-Signature", "ns")
    assert configured.dragonfly2_job_urls == "single"
    with pytest.raises(ValueError, match="PREHEAT_LAYER_URLS must be one of registry, storage"):
        Settings.from_env({"PREHEAT_LAYER_URLS": "s3"})
    with pytest.raises(ValueError, match="PREHEAT_DRAGONFLY2_PIECE_LENGTH"):
        Settings.from_env({"PREHEAT_DRAGONFLY2_PIECE_LENGTH": "big"})
