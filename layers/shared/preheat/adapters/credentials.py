"""Registry credentials that never travel in requests: ECR authorization tokens, and credentials an
operator keeps in a Secrets Manager secret. Both are cached until they expire and only ever held
as :class:`Credentials`, whose repr shows no value."""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from preheat.adapters import aws
from preheat.errors import PermanentFailure, TransientFailure
from preheat.models import Credentials
from preheat.settings import Settings

ECR_HOST_RE = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
# Renew an ECR token this long before it expires (they last 12 hours).
ECR_RENEW_MARGIN_SECONDS = 300
SECRET_MAX_AGE_SECONDS = 300
_NOT_RETRYABLE = frozenset(
    {"AccessDeniedException", "ResourceNotFoundException", "InvalidParameterException"}
)

SecretReader = Callable[[str], Any]


def _read_secret(name: str) -> Any:
    # Imported on demand: deployments without stored credentials never load it.
    from aws_lambda_powertools.utilities.parameters import get_secret  # noqa: PLC0415

    return get_secret(name, max_age=SECRET_MAX_AGE_SECONDS)


class AwsCredentialStore:
    def __init__(
        self,
        settings: Settings,
        ecr_client_factory: Callable[[str], Any] | None = None,
        secret_reader: SecretReader = _read_secret,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret_name = settings.registry_credentials_secret
        self._ecr_client_factory = ecr_client_factory or functools.cache(_ecr_client)
        self._read_secret = secret_reader
        self._clock = clock
        self._ecr_tokens: dict[tuple[str, str], tuple[Credentials, float]] = {}
        self._lock = threading.Lock()

    def for_registry(self, registry: str) -> Credentials | None:
        stored = self._from_secret(registry)
        if stored is not None:
            return stored
        match = ECR_HOST_RE.match(registry.rsplit(":", 1)[0])
        if match:
            return self._ecr_token(account=match.group(1), region=match.group(2))
        return None

    def _from_secret(self, registry: str) -> Credentials | None:
        if not self._secret_name:
            return None
        entries = self._secret_entries()
        entry = entries.get(registry) or entries.get(registry.rsplit(":", 1)[0])
        if entry is None:
            return None
        if isinstance(entry, Mapping) and isinstance(entry.get("token"), str):
            return Credentials({"Authorization": f"Bearer {entry['token']}"})
        if isinstance(entry, Mapping) and isinstance(entry.get("username"), str):
            pair = f"{entry['username']}:{entry.get('password', '')}".encode()
            return Credentials({"Authorization": f"Basic {base64.b64encode(pair).decode()}"})
        raise PermanentFailure(
            f"secret {self._secret_name} has an entry for {registry} that is neither "
            '{"username": ..., "password": ...} nor {"token": ...}'
        )

    def _secret_entries(self) -> Mapping[str, Any]:
        try:
            raw = self._read_secret(self._secret_name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            failure = PermanentFailure if code in _NOT_RETRYABLE else TransientFailure
            raise failure(
                f"could not read the registry credentials secret {self._secret_name}: {code}"
            ) from None
        except BotoCoreError as exc:
            raise TransientFailure(
                f"could not read the registry credentials secret {self._secret_name}: {type(exc).__name__}"
            ) from None
        try:
            entries = json.loads(raw) if isinstance(raw, str | bytes) else raw
        except ValueError:
            entries = None
        if not isinstance(entries, Mapping):
            # Never quote the value: it is the credentials.
            raise PermanentFailure(
                f"secret {self._secret_name} must be a JSON object mapping registry hosts to credentials"
            )
        return {str(host).lower(): entry for host, entry in entries.items()}

    def _ecr_token(self, account: str, region: str) -> Credentials:
        key = (account, region)
        with self._lock:
            cached = self._ecr_tokens.get(key)
            if cached is not None and cached[1] - ECR_RENEW_MARGIN_SECONDS > self._clock():
                return cached[0]
        try:
            answer = self._ecr_client_factory(region).get_authorization_token(registryIds=[account])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            failure = PermanentFailure if code in _NOT_RETRYABLE else TransientFailure
            raise failure(f"ECR refused an authorization token for {account} in {region}: {code}") from None
        except BotoCoreError as exc:
            raise TransientFailure(
                f"could not get an ECR token for {account} in {region}: {type(exc).__name__}"
            ) from None
        data = answer["authorizationData"][0]
        # The token is base64("AWS:<password>"): exactly a Basic credential.
        credentials = Credentials({"Authorization": f"Basic {data['authorizationToken']}"})
        expires = data.get("expiresAt")
        expires_at = expires.timestamp() if isinstance(expires, datetime) else self._clock() + 3600
        with self._lock:
            self._ecr_tokens[key] = (credentials, expires_at)
        return credentials


def _ecr_client(region: str) -> Any:
    return aws.client("ecr", region=region)
