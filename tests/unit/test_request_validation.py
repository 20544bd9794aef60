"""Given a request body, When it is parsed, Then it is accepted as the spec allows or refused
with a message that says what is wrong."""

import pytest

from preheat.errors import InvalidRequest
from preheat.models import ImageReference, PreheatRequest, PreheatType

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("url", "registry", "repository", "tag", "digest"),
    [
        ("registry.example.com/library/nginx:1.25", "registry.example.com", "library/nginx", "1.25", None),
        ("127.0.0.1:5000/demo:latest", "127.0.0.1:5000", "demo", "latest", None),
        ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", "v1", None),
        (f"harbor.io/proj/app@{DIGEST}", "harbor.io", "proj/app", None, DIGEST),
        (f"harbor.io/proj/app:v2@{DIGEST}", "harbor.io", "proj/app", "v2", DIGEST),
        ("https://harbor.io/v2/proj/app/manifests/v3", "harbor.io", "proj/app", "v3", None),
        (f"http://127.0.0.1:5000/v2/demo/manifests/{DIGEST}", "127.0.0.1:5000", "demo", None, DIGEST),
        ("docker.io/nginx", "registry-1.docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "registry-1.docker.io", "library/nginx", "1.25", None),
        ("registry.example.com/team/app", "registry.example.com", "team/app", "latest", None),
    ],
)
def test_image_url_forms_are_understood(url, registry, repository, tag, digest):
    ref = ImageReference.parse(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_digest_wins_over_tag_when_fetching():
    ref = ImageReference.parse(f"harbor.io/proj/app:v2@{DIGEST}")
    assert ref.reference == DIGEST
    assert ref.manifest_url(insecure=False) == f"https://harbor.io/v2/proj/app/manifests/{DIGEST}"
    assert ref.blob_url("sha256:" + "b" * 64, insecure=True).startswith("http://harbor.io/v2/proj/app/blobs/")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "must be a JSON object"),
        ("x", "must be a JSON object"),
        ({"url": "h.io/a:b"}, '\'type\' must be "image" or "file", got nothing'),
        ({"type": "docker", "url": "h.io/a:b"}, "'type' must be \"image\" or \"file\", got 'docker'"),
        ({"type": "image"}, "'url' must be a non-empty string"),
        ({"type": "image", "url": ""}, "'url' must be a non-empty string"),
        ({"type": "image", "url": "   "}, "'url' must be a non-empty string"),
        ({"type": "image", "url": 5}, "'url' must be a non-empty string"),
        ({"type": "image", "url": "h.io/UPPER:tag"}, "invalid repository name"),
        ({"type": "image", "url": "h.io/a:-bad"}, "invalid tag"),
        ({"type": "image", "url": "h.io/a@sha256:123"}, "invalid digest"),
        (
            {"type": "image", "url": "https://h.io/not/a/manifest"},
            "no '/v2/<name>/manifests/<reference>' path",
        ),
        ({"type": "image", "url": "ftp://h.io/v2/a/manifests/b"}, "not a registry manifest URL"),
        ({"type": "file", "url": "not a url"}, "must not contain spaces"),
        ({"type": "file", "url": "ftp://h.io/file"}, "absolute http:// or https:// URL"),
        ({"type": "file", "url": "/relative/path"}, "absolute http:// or https:// URL"),
        ({"type": "file", "url": "https://u:p@h.io/f"}, "must not carry credentials"),
        ({"type": "file", "url": "https://h.io/" + "a" * 3000}, "at most 2048"),
        ({"type": "file", "url": "https://h.io/f", "header": []}, "'header' must be a JSON object"),
        ({"type": "file", "url": "https://h.io/f", "header": "x"}, "'header' must be a JSON object"),
        ({"type": "file", "url": "https://h.io/f", "header": {"A": 1}}, "value of 'A' must be a string"),
        ({"type": "file", "url": "https://h.io/f", "header": {"A b": "x"}}, "not a valid HTTP header name"),
        ({"type": "file", "url": "https://h.io/f", "header": {"A": "x\r\nB: y"}}, "control characters"),
        (
            {"type": "file", "url": "https://h.io/f", "header": {f"H{i}": "v" for i in range(33)}},
            "at most 32",
        ),
    ],
)
def test_bad_bodies_are_refused_with_a_clear_reason(body, fragment):
    with pytest.raises(InvalidRequest) as caught:
        PreheatRequest.parse(body)
    assert fragment in str(caught.value)


def test_a_refused_header_value_is_never_echoed():
    canary = "s3cr3t-canary-value\n"
    with pytest.raises(InvalidRequest) as caught:
        PreheatRequest.parse({"type": "file", "url": "https://h.io/f", "header": {"Authorization": canary}})
    assert "s3cr3t" not in str(caught.value)


def test_credentials_never_show_in_repr_or_str():
    request = PreheatRequest.parse(
        {"type": "image", "url": "h.io/a:b", "header": {"Authorization": "Bearer s3cr3t"}}
    )
    assert request.type is PreheatType.IMAGE
    assert request.headers.reveal() == {"Authorization": "Bearer s3cr3t"}
    for text in (repr(request), str(request), repr(request.headers), f"{request.headers}"):
        assert "s3cr3t" not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("linux/arm64", ["linux/arm64"]),
        ("linux/amd64,linux/arm64/v8", ["linux/amd64", "linux/arm64/v8"]),
        (["linux/amd64", "LINUX/AMD64"], ["linux/amd64"]),
        (None, []),
        ([], []),
    ],
)
def test_platform_may_be_one_a_comma_list_or_an_array(raw, expected):
    request = PreheatRequest.parse({"type": "image", "url": "h.io/a:b", "platform": raw})
    assert [str(p) for p in request.platforms] == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("linux", "is not 'os/architecture'"),
        ("linux/arm64/v8/x", "is not 'os/architecture'"),
        (5, "must be a string"),
        ([5], "entries must be strings"),
        (["linux/amd64"] * 65, "at most 64"),
    ],
)
def test_a_bad_platform_is_refused(raw, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        PreheatRequest.parse({"type": "image", "url": "h.io/a:b", "platform": raw})


def test_platform_is_refused_for_a_file():
    with pytest.raises(InvalidRequest, match="applies to images only"):
        PreheatRequest.parse({"type": "file", "url": "https://h.io/f", "platform": "linux/amd64"})


@pytest.mark.parametrize(
    ("requested", "offered", "matches"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64", "linux/arm64", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm64/v8", "linux/arm64/v8", True),
        ("linux/arm/v7", "linux/arm", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "linux/arm64", False),
        ("linux/amd64", "windows/amd64", False),
    ],
)
def test_platform_variant_matching(requested, offered, matches):
    from preheat.models import Platform

    assert Platform.parse(requested).matches(Platform.parse(offered)) is matches


def test_deployment_default_platforms_come_from_the_environment():
    from preheat.settings import Settings

    assert Settings.from_env({"PREHEAT_PLATFORMS": "linux/amd64, linux/arm64"}).platforms == (
        "linux/amd64",
        "linux/arm64",
    )
    with pytest.raises(ValueError, match="PREHEAT_PLATFORMS"):
        Settings.from_env({"PREHEAT_PLATFORMS": "amd64"})


def test_the_retry_backoff_comes_from_the_environment():
    from preheat.settings import Settings

    defaults = Settings.from_env({})
    assert (defaults.retry_base_delay_seconds, defaults.retry_max_delay_seconds) == (1.0, 60.0)
    tuned = Settings.from_env({"PREHEAT_RETRY_BASE_DELAY": "0.5", "PREHEAT_RETRY_MAX_DELAY": "99999"})
    assert tuned.retry_base_delay_seconds == 0.5
    assert tuned.retry_max_delay_seconds == 43200  # SQS's longest visibility timeout
    with pytest.raises(ValueError, match="PREHEAT_RETRY_MAX_DELAY must be greater than 0"):
        Settings.from_env({"PREHEAT_RETRY_MAX_DELAY": "0"})
