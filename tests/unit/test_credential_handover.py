"""What of the service's stored registry credentials the peers are handed (preheat.handover): a token
scoped to the one repository, else nothing unless PREHEAT_STORED_CREDENTIALS_HANDOVER=broad (which
refuses 'ips'); and a token is reused or handed over only while it has max(60 s, half its lifetime)
left, on an injected clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from preheat import handover
from preheat.adapters import registry as registry_module
from preheat.adapters.registry import HttpRegistryClient
from preheat.errors import InvalidRequest
from preheat.models import Credentials, PreheatRequest
from preheat.ports import UNBOUNDED, ResolveOptions
from preheat.service import PreheatService
from preheat.settings import Settings
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore
from tests.support.registry import StubResponse
from tests.unit.test_registry_client import (
    SETTINGS,
    StubRegistry,
    basic,
    basic_auth,
    bearer_auth,
    fake,
    server,
)

__all__ = ["fake", "server"]  # fixtures, used by name

REGISTRY_MODE = replace(SETTINGS, layer_urls="registry")
STORED = basic("robot", "stored-Pw-9xq")
STORED_ONLY = ResolveOptions(stored_credentials=True)


def client_for(settings: Settings = REGISTRY_MODE) -> HttpRegistryClient:
    return HttpRegistryClient(settings, sleep=lambda seconds: None)


def handed_over(fake: StubRegistry, settings: Settings = REGISTRY_MODE) -> list[dict[str, str]]:
    resolved = client_for(settings).resolve_image(
        fake.image("v1"), Credentials({"Authorization": STORED, "X-Team": "a"}), options=STORED_ONLY
    )
    return [blob.headers.reveal() for blob in resolved.blobs]


# -- item 1: scope -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_urls", ["registry", "storage"])
def test_stored_credentials_are_handed_over_only_as_a_token_for_the_one_repository(
    fake: StubRegistry, layer_urls: str
) -> None:
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "repo-token")
    fake.token_answer = lambda request: (
        StubResponse.json({"token": "repo-token", "expires_in": 300})
        if request.header("Authorization") == STORED
        else StubResponse(401)
    )

    headers = handed_over(fake, replace(REGISTRY_MODE, layer_urls=layer_urls))

    assert headers
    assert all(h == {"Authorization": "Bearer repo-token", "X-Team": "a"} for h in headers)
    assert fake.server.requests_to("/token")[0].query["scope"] == ["repository:app:pull"]


def test_a_token_for_more_than_pulling_the_repository_is_not_handed_over(fake: StubRegistry) -> None:
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "wide-token", scope="repository:app:pull,push")
    fake.token_answer = lambda request: StubResponse.json({"token": "wide-token", "expires_in": 300})

    assert handed_over(fake) == [{"X-Team": "a"}] * 2


def test_a_registry_that_cannot_scope_gets_the_peers_nothing_by_default(fake: StubRegistry) -> None:
    """ECR and Basic-only registries: the stored credential is good for every repository."""
    fake.add_image("v1", [b"layer"])
    fake.auth = basic_auth(STORED)

    assert handed_over(fake) == [{"X-Team": "a"}] * 2
    assert (
        handed_over(fake, replace(REGISTRY_MODE, stored_credentials_handover="broad"))
        == [{"Authorization": STORED, "X-Team": "a"}] * 2
    )


def test_the_callers_own_credentials_are_still_handed_over(fake: StubRegistry) -> None:
    fake.add_image("v1", [b"layer"])
    fake.auth = basic_auth(STORED)

    resolved = client_for().resolve_image(fake.image("v1"), Credentials({"Authorization": STORED}))

    assert all(blob.headers.reveal() == {"Authorization": STORED} for blob in resolved.blobs)


def test_the_worker_marks_stored_credentials_as_such() -> None:
    from preheat.worker import Worker

    class Stored:
        def for_registry(self, registry: str) -> Credentials:
            return Credentials({"Authorization": STORED})

    seen: list[bool] = []

    class Registry(FakeRegistry):
        def resolve_image(self, image, headers, platforms=(), options=UNBOUNDED):  # type: ignore[no-untyped-def]
            seen.append(options.stored_credentials)
            return super().resolve_image(image, headers, platforms, options)

    settings = Settings(check_window_seconds=0)
    for header in ({}, {"Authorization": "Bearer mine"}):
        store, queue, registry = FakeTaskStore(), FakeQueue(), Registry()
        registry.images["registry.example.com/app:v1"] = []
        body = {"type": "image", "url": "registry.example.com/app:v1", "header": header}
        PreheatService(store, queue, settings, clock=Clock()).submit(PreheatRequest.parse(body))
        Worker(
            store, queue, registry, FakeSupernodes(), settings, clock=Clock(), credentials=Stored()
        ).handle(queue.take()[0])
    assert seen == [True, False]


def test_ips_are_refused_at_submit_while_broad_credentials_are_handed_over() -> None:
    body = {"type": "image", "url": "registry.example.com/app:v1", "ips": ["10.0.0.7"]}
    broad = Settings(supernode_api="dragonfly2", stored_credentials_handover="broad")
    store = FakeTaskStore()

    with pytest.raises(
        InvalidRequest, match="'ips' is refused while PREHEAT_STORED_CREDENTIALS_HANDOVER=broad"
    ):
        PreheatService(store, FakeQueue(), broad, clock=Clock()).submit(PreheatRequest.parse(body))
    assert not store.tasks

    scoped = replace(broad, stored_credentials_handover="scoped")
    PreheatService(store, FakeQueue(), scoped, clock=Clock()).submit(PreheatRequest.parse(body))
    other = {"type": "image", "url": "registry.example.com/app:v1", "count": 3}
    PreheatService(store, FakeQueue(), broad, clock=Clock()).submit(PreheatRequest.parse(other))
    assert len(store.tasks) == 2


def test_the_setting_reads_scoped_or_broad() -> None:
    assert Settings.from_env({}).stored_credentials_handover == "scoped"
    env = {"PREHEAT_STORED_CREDENTIALS_HANDOVER": "broad"}
    assert Settings.from_env(env).stored_credentials_handover == "broad"
    with pytest.raises(ValueError, match="PREHEAT_STORED_CREDENTIALS_HANDOVER must be one of scoped, broad"):
        Settings.from_env({"PREHEAT_STORED_CREDENTIALS_HANDOVER": "all"})


# -- item 2: freshness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "reused_until"), [(300.0, 150.0), (3600.0, 1800.0), (100.0, 40.0), (60.0, 0.0)]
)
def test_the_life_a_token_needs_left_is_the_stricter_of_60_s_and_half_its_lifetime(
    lifetime: float, reused_until: float
) -> None:
    assert handover.fresh_enough(reused_until, lifetime)
    assert not handover.fresh_enough(reused_until + 0.5, lifetime)


def test_a_cached_token_near_its_end_is_not_reused_or_handed_over(
    fake: StubRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token fetched with expires_in=300 was handed over again at 299.5 s."""
    fake.add_image("v1", [b"layer"])
    fake.auth = bearer_auth(fake, "t")
    issued: list[str] = []

    def token(request):  # type: ignore[no-untyped-def]
        issued.append(f"t{len(issued)}")
        fake.auth = bearer_auth(fake, issued[-1])
        return StubResponse.json({"token": issued[-1], "expires_in": 300})

    fake.token_answer = token
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])
    client = client_for()

    def headers() -> str:
        return client.resolve_image(fake.image("v1"), Credentials()).blobs[0].headers["Authorization"]

    assert headers() == "Bearer t0"
    now[0] += 150.0
    assert headers() == "Bearer t0"  # half its life left: reused
    now[0] += 149.5  # 299.5 s old
    assert headers() == "Bearer t1"
    assert len(fake.server.requests_to("/token")) == 2


def test_a_reused_token_that_ages_during_the_resolution_is_replaced_before_the_handover(
    fake: StubRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_image("v1", [b"layer"])
    issued: list[str] = []

    def token(request):  # type: ignore[no-untyped-def]
        issued.append(f"t{len(issued)}")
        return StubResponse.json({"token": issued[-1], "expires_in": 300})

    fake.token_answer = token
    fake.auth = lambda request: (
        None
        if (request.header("Authorization") or "").startswith("Bearer t")
        else bearer_auth(fake, "x")(request)
    )
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])
    client = client_for()
    client.resolve_image(fake.image("v1"), Credentials())
    now[0] += 150.0  # reusable at the start of the next resolution...
    original = fake.serve

    def slow(request):  # type: ignore[no-untyped-def]
        now[0] += 1.0  # ... which takes a second per request
        return original(request)

    fake.serve = slow  # type: ignore[method-assign]

    blobs = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert {blob.headers["Authorization"] for blob in blobs} == {"Bearer t1"}
    assert len(issued) == 2


def test_a_token_service_failing_once_at_the_handover_refresh_is_retried(
    fake: StubRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_image("v1", [b"layer"])
    answers = [
        StubResponse.json({"token": "t0", "expires_in": 300}),
        StubResponse(503),
        StubResponse.json({"token": "t1", "expires_in": 300}),
    ]
    fake.token_answer = lambda request: answers.pop(0)
    fake.auth = lambda request: (
        None
        if (request.header("Authorization") or "").startswith("Bearer t")
        else bearer_auth(fake, "x")(request)
    )
    now = [1000.0]
    monkeypatch.setattr(registry_module, "_now", lambda: now[0])
    client = client_for()
    client.resolve_image(fake.image("v1"), Credentials())
    now[0] += 150.0
    original = fake.serve

    def slow(request):  # type: ignore[no-untyped-def]
        now[0] += 1.0
        return original(request)

    fake.serve = slow  # type: ignore[method-assign]

    blobs = client.resolve_image(fake.image("v1"), Credentials()).blobs

    assert {blob.headers["Authorization"] for blob in blobs} == {"Bearer t1"}


def test_peer_credentials_keeps_other_headers() -> None:
    credentials = Credentials({"Authorization": STORED, "X-Team": "a"})
    kept = handover.peer_credentials(credentials, stored=True, scoped_token=False, settings=Settings())
    assert kept.reveal() == {"X-Team": "a"}
    assert (
        handover.peer_credentials(credentials, stored=False, scoped_token=False, settings=Settings())
        is credentials
    )


def test_the_template_sets_the_handover_for_every_function_scoped_by_default() -> None:
    from pathlib import Path

    from local.template import load_template
    from preheat.settings import STORED_CREDENTIALS_HANDOVERS

    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml").raw
    parameter = template["Parameters"]["StoredCredentialsHandover"]
    assert parameter["Default"] == "scoped"
    assert tuple(parameter["AllowedValues"]) == STORED_CREDENTIALS_HANDOVERS
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["PREHEAT_STORED_CREDENTIALS_HANDOVER"].name == "StoredCredentialsHandover"
