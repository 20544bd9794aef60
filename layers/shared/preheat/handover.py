"""What registry credentials leave the service with a blob, and when a token is fresh enough to.

The supernode or manager downloads a registry blob with the ``headers`` it is handed, and the
Dragonfly 2 manager stores them with the job and answers them from its jobs API; the request's
``scope``/``ips`` choose the peers that receive them. So:

- A request's own headers are the caller's to hand over: they go as given, except that Basic
  credentials the registry exchanges for a Bearer token are handed over as that token.
- The service's stored credentials (an ECR token, a Secrets Manager entry) are good for every
  repository the worker may pull, for hours. The peers get only a token the registry's token service
  issued for ``repository:<name>:pull`` of the one image; where the registry cannot scope one (ECR,
  Basic-only registries, a stored ready-made token), nothing: the peers pull with their own registry
  credentials (dfdaemon's configuration). ``PREHEAT_STORED_CREDENTIALS_HANDOVER=broad`` hands the
  stored credential over as it is instead, and then a request may not name ``ips``, which would
  let a caller send it to hosts of their choosing.
- A token is handed over, and reused from the cache, only while it has at least
  :func:`life_needed` left: a token the peers receive near its end fails their download.
"""

from __future__ import annotations

from preheat.errors import InvalidRequest
from preheat.models import Credentials, Targeting
from preheat.settings import STORED_CREDENTIALS_HANDOVERS, Settings

SCOPED, BROAD = STORED_CREDENTIALS_HANDOVERS  # PREHEAT_STORED_CREDENTIALS_HANDOVER; SCOPED by default
# A token handed over must outlive the queueing and start of the peers' download by this much...
MIN_LIFE_LEFT_SECONDS = 60.0
# ... and have at least this share of its lifetime left, whichever asks for more.
MIN_SHARE_LEFT = 0.5


def life_needed(lifetime: float) -> float:
    """The life a token of ``lifetime`` seconds must have left to be reused: ``max(60 s, lifetime/2)``,
    the stricter of the two rules, but never more than the lifetime itself (a token that never lives
    60 s is used only as it arrives from the token service). 300 s: reused for its first 150 s;
    3600 s: for its first 1800 s; 100 s: for its first 40 s; 60 s or less: never."""
    return min(lifetime, max(MIN_LIFE_LEFT_SECONDS, lifetime * MIN_SHARE_LEFT))


def fresh_enough(age: float, lifetime: float) -> bool:
    """Whether a token fetched ``age`` seconds ago with ``lifetime`` may be reused and handed over."""
    return lifetime - age >= life_needed(lifetime)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def peer_credentials(
    credentials: Credentials, *, stored: bool, scoped_token: bool, settings: Settings
) -> Credentials:
    """The headers handed to the peers with a registry blob.

    ``credentials``: what the worker itself sends to the registry now (the request's headers and the
    Authorization in use). ``stored``: that Authorization is the service's stored credential, or a
    token exchanged with it. ``scoped_token``: it is a Bearer token issued for ``pull_scope`` of the
    image's repository alone."""
    if not stored or scoped_token or settings.stored_credentials_handover == BROAD:
        return credentials
    return Credentials(
        {name: value for name, value in credentials.reveal().items() if name.lower() != "authorization"}
    )


def check_targeting(targeting: Targeting, settings: Settings) -> None:
    """InvalidRequest for ``ips`` while broad stored credentials are handed over."""
    if targeting.ips and settings.stored_credentials_handover == BROAD:
        raise InvalidRequest(
            "'ips' is refused while PREHEAT_STORED_CREDENTIALS_HANDOVER=broad: the peers would receive "
            "the service's stored registry credentials, and 'ips' would choose which hosts get them; "
            "use 'scope', 'count' or 'percentage' instead"
        )
