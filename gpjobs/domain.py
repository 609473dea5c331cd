"""The job domain: Esri job statuses, the allowed transitions, and the records the store hands out.

Pure data: no I/O, no SQL, no aiohttp. Every layer (store, scheduler, web) speaks these types.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    """The eight esriJob* values the RA services emit (protocol.md §3); nothing else ever reaches a client."""

    SUBMITTED = "esriJobSubmitted"
    WAITING = "esriJobWaiting"
    EXECUTING = "esriJobExecuting"
    SUCCEEDED = "esriJobSucceeded"
    FAILED = "esriJobFailed"
    TIMED_OUT = "esriJobTimedOut"
    CANCELLING = "esriJobCancelling"
    CANCELLED = "esriJobCancelled"

    def __str__(self) -> str:  # f-strings and logs show the wire value
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}
)
QUEUED_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.SUBMITTED, JobStatus.WAITING})
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.EXECUTING, JobStatus.CANCELLING})

# Allowed edges (anchors.md §2.3). Executing -> Submitted is a retry/resume (lost child, server restart,
# graceful shutdown); Cancelling -> Succeeded covers a publish that committed before the cancel landed.
# Waiting is stored only for a job that is queued while every slot is busy; it behaves like Submitted.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUBMITTED: frozenset({JobStatus.WAITING, JobStatus.EXECUTING, JobStatus.CANCELLED}),
    JobStatus.WAITING: frozenset({JobStatus.SUBMITTED, JobStatus.EXECUTING, JobStatus.CANCELLED}),
    JobStatus.EXECUTING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLING, JobStatus.SUBMITTED}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which `target` may be reached (the WHERE clause of a guarded UPDATE)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


# Server crashes (boot recovery of a job that was running) give the attempt back, like a graceful stop;
# a job survives this many of them, so one that takes the whole server down every time is not requeued forever.
SERVER_CRASH_LIMIT = 5


class MessageType(str, Enum):
    """GP message types (protocol.md §3); we emit Informative, Warning and Error only."""

    INFORMATIVE = "esriJobMessageTypeInformative"
    WARNING = "esriJobMessageTypeWarning"
    ERROR = "esriJobMessageTypeError"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_level(cls, level: str) -> MessageType:
        """Map a child event level (info | warning | error) to a message type."""
        return {"warning": cls.WARNING, "error": cls.ERROR}.get(level, cls.INFORMATIVE)


ITEM_TYPE_DLPK = "Deep Learning Package"
ITEM_TYPE_KEYWORDS = ["Deep Learning", "Raster"]  # Esri's TrainDeepLearningModel.py (protocol.md §5.2)
ITEM_TAGS = ["imagery"]
# What the inference tasks publish (a GeoTIFF; GeoJSON with a GeoPackage beside it), and the empty service items
# a client creates first (content/users/<u>/createService) for a task to fill.
ITEM_TYPE_IMAGE = "Image"
ITEM_TYPE_GEOJSON = "GeoJson"
ITEM_TYPE_IMAGE_SERVICE = "Image Service"
ITEM_TYPE_FEATURE_SERVICE = "Feature Service"


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (the unit of every stored timestamp)."""
    return time.time_ns() // 1_000_000


def new_job_id() -> str:
    """`j` + 32 lowercase hex, like ArcGIS job ids."""
    return "j" + uuid.uuid4().hex


def new_item_id() -> str:
    """32 lowercase hex, like portal item ids."""
    return uuid.uuid4().hex


_JOB_ID = re.compile(r"j[0-9a-f]{32}")
_ITEM_ID = re.compile(r"[0-9a-f]{32}")


def is_job_id(value: str) -> bool:
    return _JOB_ID.fullmatch(value) is not None  # every status poll checks one: a regex, not a loop per character


def is_item_id(value: str) -> bool:
    return _ITEM_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Job:
    """One job of a GP task as stored (TrainDeepLearningModel, or an inference task).

    `inputs` are the raw submitted values by parameter name (served back by `jobs/<id>/inputs/<name>`);
    `spec` is the normalised parameter set that becomes the child's `JobSpec` (resolved paths, parsed numbers);
    `model_type` is the trained model type, or for an inference job the model type of its package.
    """

    job_id: str
    owner: str
    status: JobStatus
    model_type: str
    inputs: dict[str, Any] = field(default_factory=dict)
    task: str = "TrainDeepLearningModel"  # the GP task it was submitted to (gpjobs.tasks.registry)
    spec: dict[str, Any] = field(default_factory=dict)
    progress: float | None = None  # percent 0..100 while executing
    attempts: int = 0  # claims so far (a graceful shutdown or a server crash gives its attempt back)
    max_attempts: int = 3
    result: dict[str, Any] | None = None  # {"id": item_id} or {"uri": "/fileShares/..."}
    error: str | None = None  # human-readable cause of Failed / TimedOut
    created_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    device: str | None = None  # slot that runs / ran it: "cpu", "cuda:0"
    boot_id: str | None = None  # server boot that claimed it (recovery tells orphans by it)
    heartbeat_ms: int | None = None
    checkpoint_epoch: int | None = None  # last epoch the child checkpointed (resume point)
    cancel_requested_ms: int | None = None
    run_after_ms: int = 0  # retry backoff: not claimable before this time
    interruptions: int = 0  # graceful shutdowns survived (they do not spend attempts)
    server_crashes: int = 0  # server crashes survived while running (no attempt spent; SERVER_CRASH_LIMIT)
    updated_ms: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Message:
    """One job message, append-only, ordered by `seq` (clients print new ones by index)."""

    seq: int
    type: MessageType
    description: str
    time_ms: int = 0


@dataclass(frozen=True)
class Item:
    """A published model: a portal-like item whose file lives in the content store."""

    id: str
    owner: str
    title: str
    name: str  # "<title>.dlpk"
    type: str = ITEM_TYPE_DLPK
    type_keywords: list[str] = field(default_factory=lambda: list(ITEM_TYPE_KEYWORDS))
    tags: list[str] = field(default_factory=lambda: list(ITEM_TAGS))
    folder_id: str | None = None
    size: int = 0
    created_ms: int = 0
    modified_ms: int = 0
    path: str = ""  # absolute path of the .dlpk in the content store
    job_id: str | None = None
    description: str | None = None
    snippet: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Item:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's user, or the anonymous admin of a loopback-only server."""

    username: str
    role: str = "user"  # "user" | "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see(self, owner: str) -> bool:
        """Users see their own jobs and items; admins see everything."""
        return self.is_admin or self.username == owner


ANONYMOUS = Principal("anonymous", "admin")
ROLES = frozenset({"user", "admin"})


# --- errors ------------------------------------------------------------------------------------


class GpJobsError(Exception):
    """Base of the errors a user can cause; `str()` says what was wrong and how to fix it."""

    code = 400  # Esri error code (the web layer renders {"error": {"code", "message", "details"}})


class JobNotFound(GpJobsError):
    code = 400  # protocol.md §2.4: unknown job id -> "Invalid URL"-style 400 body


class ItemNotFound(GpJobsError):
    code = 400


class InvalidTransition(GpJobsError):
    """A guarded status update found the job in a state that does not allow the change."""

    code = 400

    def __init__(self, job_id: str, current: JobStatus | None, target: JobStatus) -> None:
        self.job_id, self.current, self.target = job_id, current, target
        super().__init__(f"job {job_id} is {current} and cannot become {target}")


class ItemExists(GpJobsError):
    """An item of that name and owner exists and overwrite_model was false."""

    code = 400


class QuotaExceeded(GpJobsError):
    """Too many queued jobs for one user (config max_queued_per_user)."""

    code = 429
