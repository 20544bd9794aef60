"""The task id a node computes, in each target's algorithm, checked against vectors from Dragonfly's
own tests (dragonfly-client-util's id generator) and against the algorithm written out here."""

from __future__ import annotations

import hashlib

import pytest

from preheat.settings import Settings
from preheat.task_ids import dragonfly1_task_id, dragonfly2_task_id

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
