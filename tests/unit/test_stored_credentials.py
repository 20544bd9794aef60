"""Credentials that never travel in requests: ECR tokens and a Secrets Manager secret, against
moto; and the worker using them only when the request brought no Authorization."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from preheat.adapters.credentials import AwsCredentialStore
from preheat.errors import PermanentFailure
from preheat.models import Credentials, PreheatRequest
from preheat.settings import Settings
from tests.support.fakes import Clock, FakeQueue, FakeRegistry, FakeSupernodes, FakeTaskStore

ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
# moto's ECR tokens expire at 2015-01-01 00:00 UTC: the tests' clocks stand half a day before.
BEFORE_MOTO_EXPIRY = datetime(2014, 12, 31, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def store_with_secret(value: object) -> AwsCredentialStore:
    boto3.client("secretsmanager").create_secret(Name="registry-creds", SecretString=json.dumps(value))

    def read(name: str) -> str:
        return boto3.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"]

    return AwsCredentialStore(Settings(registry_credentials_secret="registry-creds"), secret_reader=read)


@pytest.mark.usefixtures("aws")
def test_an_ecr_host_gets_a_basic_header_from_get_authorization_token_and_reuses_it():
    calls = []

    def factory(region):
        calls.append(region)
        return boto3.client("ecr", region_name=region)

    store = AwsCredentialStore(Settings(), ecr_client_factory=factory, clock=lambda: BEFORE_MOTO_EXPIRY)
    credentials = store.for_registry(ECR_HOST)
    assert credentials is not None
    header = credentials["Authorization"]
    assert header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")).startswith(b"AWS:")
    assert store.for_registry(ECR_HOST) == credentials
    assert calls == ["eu-west-1"]  # cached until it expires
    assert "Basic" not in repr(credentials)


@pytest.mark.usefixtures("aws")
def test_an_expiring_ecr_token_is_renewed():
    now = [BEFORE_MOTO_EXPIRY]
    store = AwsCredentialStore(
        Settings(),
        ecr_client_factory=lambda region: boto3.client("ecr", region_name=region),
        clock=lambda: now[0],
    )
    first = store.for_registry(ECR_HOST)
    now[0] += 13 * 3600  # ECR tokens last 12 hours
    assert store.for_registry(ECR_HOST) is not first


@pytest.mark.usefixtures("aws")
def test_secret_held_username_password_and_token_entries():
    store = store_with_secret(
        {
            "registry.example.com": {"username": "bot", "password": "CANARY-PW"},
            "harbor.example.com:8443": {"token": "CANARY-TOKEN"},
        }
    )
    basic = store.for_registry("registry.example.com")
    assert basic is not None
    assert basic["Authorization"] == "Basic " + base64.b64encode(b"bot:CANARY-PW").decode()
    bearer = store.for_registry("harbor.example.com:8443")
    assert bearer is not None
    assert bearer["Authorization"] == "Bearer CANARY-TOKEN"
    assert store.for_registry("other.example.com") is None
    assert "CANARY" not in repr(basic) + repr(bearer)


@pytest.mark.usefixtures("aws")
def test_a_malformed_secret_fails_without_quoting_it():
    store = store_with_secret({"registry.example.com": "CANARY-RAW"})
    with pytest.raises(PermanentFailure) as caught:
        store.for_registry("registry.example.com")
    assert "CANARY" not in str(caught.value)


@pytest.mark.usefixtures("aws")
def test_a_missing_secret_is_a_permanent_failure_naming_it():
    def read(name):
        return boto3.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"]

    store = AwsCredentialStore(Settings(registry_credentials_secret="absent"), secret_reader=read)
    with pytest.raises(PermanentFailure, match="absent: ResourceNotFoundException"):
        store.for_registry("registry.example.com")


class FixedStore:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def for_registry(self, registry: str) -> Credentials | None:
        self.asked.append(registry)
        return Credentials({"Authorization": "Basic c3RvcmVk"})


def run_start(body, credentials):
    from preheat.service import PreheatService
    from preheat.worker import Worker

    settings = Settings(check_window_seconds=0)
    store, queue, registry = FakeTaskStore(), FakeQueue(), FakeRegistry()
    registry.images[str(PreheatRequest.parse(body).image)] = []
    PreheatService(store, queue, settings, clock=Clock()).submit(PreheatRequest.parse(body))
    worker = Worker(
        store, queue, registry, FakeSupernodes(), settings, clock=Clock(), credentials=credentials
    )
    worker.handle(queue.take()[0])
    return registry.seen_headers[0].reveal()


def test_the_worker_adds_stored_credentials_only_when_the_request_has_none():
    stored = FixedStore()
    assert run_start({"type": "image", "url": f"{ECR_HOST}/app:v1", "header": {"X-Trace": "1"}}, stored) == {
        "X-Trace": "1",
        "Authorization": "Basic c3RvcmVk",
    }
    assert stored.asked == [ECR_HOST]
    own = {"type": "image", "url": f"{ECR_HOST}/app:v1", "header": {"authorization": "Bearer mine"}}
    assert run_start(own, stored) == {"authorization": "Bearer mine"}
    assert stored.asked == [ECR_HOST]  # not even asked
