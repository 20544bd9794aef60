"""Registry auth: answering a registry's 401 challenges with the caller's Basic credentials, a
cached Bearer token, or one exchanged at the token service the challenge names.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from urllib.parse import urlsplit

from preheat.adapters.expiring_cache import ExpiringCache
from preheat.adapters.http import Response
from preheat.adapters.http import loads as _loads
from preheat.adapters.quoting import truncate
from preheat.adapters.registry_target import Origin, Target, error_detail
from preheat.errors import PermanentFailure
from preheat.handover import fresh_enough
from preheat.network import AddressRefused

MAX_TOKEN_BYTES = 1024 * 1024
# The Docker token spec: a token without ``expires_in`` lives 60 seconds.
DEFAULT_TOKEN_SECONDS = 60
TOKEN_CACHE_SIZE = 256
# A token goes into a header: printable ASCII without spaces, so it cannot smuggle another header.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
# WWW-Authenticate: a scheme or parameter name, then ``=value`` or ``="quoted, value"``.
_CHALLENGE_TOKEN_RE = re.compile(r"[\s,]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)")
_CHALLENGE_PARAM_RE = re.compile(r'\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
TokenKey = tuple[str, str, str, str]
Getter = Callable[..., Response]
Reader = Callable[[Response, int, str, Target], bytes]


class Answer(Enum):
    """How a 401 challenge was answered."""

    SWITCHED = "switched"  # to the caller's credentials or a cached token
    FETCHED = "fetched"  # to a token just fetched from the realm


class RegistryAuth:
    """Switches a target to the credentials a registry's challenge asks for, keeping tokens (and the
    last challenge per repository) between resolutions.

    ``get`` and ``read`` are the client's: one GET to the token service, and its bounded body."""

    def __init__(self, get: Getter, read: Reader, clock: Callable[[], float]) -> None:
        self._get = get
        self._read = read
        # Tokens by (realm, service, scope, caller fingerprint): the fingerprint keeps one caller's
        # token (from their Basic credentials) away from another caller of the same warm Lambda, who
        # may have none. A token is reused only while it is fresh enough to hand over (see handover).
        self._tokens: ExpiringCache[TokenKey, str] = ExpiringCache(clock, TOKEN_CACHE_SIZE, fresh_enough)
        # The last Bearer challenge seen per (origin, repository): lets the next resolution of the
        # same repository start with a cached token instead of a 401 round trip.
        self._challenges: OrderedDict[tuple[Origin, str], tuple[str, str, str]] = OrderedDict()
        self._challenges_lock = threading.Lock()

    def reuse_token(self, target: Target) -> None:
        if target.repository is None or not exchangeable(target.caller_auth):
            return
        with self._challenges_lock:
            challenge = self._challenges.get((target.origin, target.repository))
        if challenge is None:
            return
        key = token_key(challenge, target.caller_auth)
        token = self._tokens.get(key)
        if token is not None:
            target.use(f"Bearer {token}", token, key)

    def answer_challenge(
        self, target: Target, header: str, sent: str | None, may_fetch: bool
    ) -> Answer | None:
        """Switch the target to other credentials after a 401; None when there are none to try.

        A cached token is tried before a new one is fetched (another thread may have refreshed it)."""
        challenges = parse_challenges(header)
        bearer = challenges.get("bearer")
        if target.repository is not None and bearer and bearer.get("realm"):
            if not exchangeable(target.caller_auth):
                # A ready token (Harbor's) is used as given: there is nothing to exchange it for.
                return None
            challenge = (
                bearer["realm"],
                bearer.get("service", ""),
                bearer.get("scope") or f"repository:{target.repository}:pull",
            )
            key = token_key(challenge, target.caller_auth)
            token = self._tokens.get(key)
            if token is not None and f"Bearer {token}" == sent:
                self._tokens.discard(key, token)
                token = None
            answer = Answer.SWITCHED
            if token is None:
                if not may_fetch:
                    return None
                with self._tokens.fetching(key):
                    # Another thread may have fetched one while this one waited for the lock: the
                    # cache has it, or (a token too short-lived for the cache to serve again) the
                    # target, whose threads share what it uses.
                    token = self._tokens.get(key)
                    shared = target.token_in_use(key)
                    if (token is None or f"Bearer {token}" == sent) and shared not in (None, sent):
                        return Answer.SWITCHED
                    if token is None or f"Bearer {token}" == sent:
                        token, lifetime = self._fetch_token(target, *challenge)
                        self._tokens.put(key, token, lifetime)
                        answer = Answer.FETCHED
            self._remember_challenge(target, challenge)
            target.use(f"Bearer {token}", token, key, fetched=answer is Answer.FETCHED)
            return answer
        if "basic" in challenges and target.caller_auth and sent != target.caller_auth:
            target.use(target.caller_auth, target.caller_auth)
            return Answer.SWITCHED
        return None

    def refresh_for_handover(self, target: Target) -> None:
        """Before the target's token goes to the peers: a token reused from the cache that is no
        longer fresh enough (it aged during the resolution) is replaced by a fresh one. A token this
        resolution fetched is as fresh as the token service makes it, and goes as it is."""
        with target.lock:
            key, current, fetched = target.token_key, target.authorization, target.token_fetched
        if key is None or fetched:
            return
        token = self._tokens.get(key)
        if token is not None and f"Bearer {token}" == current:
            return
        with self._tokens.fetching(key):
            token = self._tokens.get(key)
            fetched = token is None
            if token is None:
                token, lifetime = self._fetch_token(target, *key[:3])
                self._tokens.put(key, token, lifetime)
        target.use(f"Bearer {token}", token, key, fetched=fetched)

    def _remember_challenge(self, target: Target, challenge: tuple[str, str, str]) -> None:
        assert target.repository is not None
        key = (target.origin, target.repository)
        with self._challenges_lock:
            self._challenges[key] = challenge
            self._challenges.move_to_end(key)
            while len(self._challenges) > TOKEN_CACHE_SIZE:
                self._challenges.popitem(last=False)

    def _fetch_token(self, target: Target, realm: str, service: str, scope: str) -> tuple[str, float]:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PermanentFailure(
                f"{target.name} names a token service that is not an http(s) URL: {truncate(realm)!r}"
            )
        params = [("service", service)] if service else []
        params += [("scope", item) for item in scope.split()]
        # Only Basic credentials are exchanged; other caller headers stay with the registry.
        headers = {"Authorization": target.caller_auth} if target.caller_auth else {}
        what = f"token for repository {target.repository} from {parts.netloc}"
        try:
            response = self._get(realm, headers, target, params=params)
        except AddressRefused as exc:
            raise AddressRefused(f"could not fetch the {what}: {exc}") from None
        with response:
            if response.status_code in (401, 403):
                raise target.refused(response.status_code, error_detail(response, target.scrub))
            if response.status_code != 200:
                raise PermanentFailure(
                    f"token service {parts.netloc} answered HTTP {response.status_code} for repository "
                    f"{target.repository}{error_detail(response, target.scrub)}"
                )
            body = self._read(response, MAX_TOKEN_BYTES, what, target)
        try:
            answer = _loads(body)
        except ValueError:
            answer = None
        token = None
        if isinstance(answer, dict):
            token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token.strip()):
            raise PermanentFailure(f"token service {parts.netloc} answered without a usable token")
        assert isinstance(answer, dict)
        expires_in = answer.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
            else DEFAULT_TOKEN_SECONDS
        )
        return token.strip(), lifetime


def exchangeable(authorization: str | None) -> bool:
    """Whether a token may be asked for with these credentials: anonymous or Basic."""
    return authorization is None or authorization.strip().lower().startswith("basic ")


def token_key(challenge: tuple[str, str, str], authorization: str | None) -> TokenKey:
    fingerprint = hashlib.sha256(authorization.encode()).hexdigest() if authorization else ""
    return (*challenge, fingerprint)


def parse_challenges(header: str) -> dict[str, dict[str, str]]:
    """``WWW-Authenticate`` as {scheme: {param: value}}; quoted values may hold commas (scopes)."""
    challenges: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    position = 0
    while position < len(header):
        match = _CHALLENGE_TOKEN_RE.match(header, position)
        if not match:
            break
        name, position = match.group(1), match.end()
        value = _CHALLENGE_PARAM_RE.match(header, position)
        if value and current is not None:
            text = value.group(1)
            current[name.lower()] = (
                _QUOTED_PAIR_RE.sub(r"\1", text) if text is not None else value.group(2) or ""
            )
            position = value.end()
        elif value:
            position = value.end()  # a parameter before any scheme: malformed, ignored
        else:
            current = challenges.setdefault(name.lower(), {})
    return challenges
