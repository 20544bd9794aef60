"""Domain models, by kind: image references (``image``), request validation (``request``), the
domain task (``task``), the API's answer shapes (``answers``) and the SQS message format (``message``),
over a shared vocabulary (``common``). Everything is re-exported here.

API shapes (``to_api``) and storage shapes (in the DynamoDB adapter) are converted explicitly at each
boundary so that the domain can change without breaking either.
"""

from preheat.models.answers import LayerCounts
from preheat.models.common import (
    BlobState,
    Credentials,
    PreheatType,
    TaskStatus,
    isoformat,
    parse_isoformat,
    utcnow,
)
from preheat.models.image import (
    DOCKER_HUB_ALIASES,
    DOCKER_HUB_REGISTRY,
    ImageReference,
    Platform,
    parse_platforms,
)
from preheat.models.message import Step, WorkerMessage
from preheat.models.request import PreheatRequest, Targeting
from preheat.models.task import (
    RETRYING_PREFIX,
    TASK_ID_RE,
    Blob,
    BlobEviction,
    BlobProgress,
    ImageResolution,
    PeerCopy,
    Task,
    TaskQuery,
    is_task_id,
)

__all__ = [
    "DOCKER_HUB_ALIASES",
    "DOCKER_HUB_REGISTRY",
    "RETRYING_PREFIX",
    "TASK_ID_RE",
    "Blob",
    "BlobEviction",
    "BlobProgress",
    "BlobState",
    "Credentials",
    "ImageReference",
    "ImageResolution",
    "LayerCounts",
    "PeerCopy",
    "Platform",
    "PreheatRequest",
    "PreheatType",
    "Step",
    "Targeting",
    "Task",
    "TaskQuery",
    "TaskStatus",
    "WorkerMessage",
    "is_task_id",
    "isoformat",
    "parse_isoformat",
    "parse_platforms",
    "utcnow",
]
