"""Every SQL statement the store runs on its tables, by name, with named parameters (connection PRAGMAs are
in db.py, the schema in migrations/).

The filters are static text: a list of statuses is ONE parameter, a JSON array read with json_each, and an
optional filter is `(:x IS NULL OR column = :x)`. The little text built here is built once, at import time,
from the column constants below; nothing a request sends ever becomes SQL text.
"""

from __future__ import annotations

from gpjobs.domain import JobStatus

# --- columns -----------------------------------------------------------------------------------

JOB_COLUMNS = (
    "job_id",
    "owner",
    "status",
    "task",
    "model_type",
    "inputs",
    "spec",
    "progress",
    "attempts",
    "max_attempts",
    "interruptions",
    "server_crashes",
    "result",
    "error",
    "created_ms",
    "updated_ms",
    "started_ms",
    "finished_ms",
    "run_after_ms",
    "device",
    "boot_id",
    "pid",
    "heartbeat_ms",
    "checkpoint_epoch",
    "cancel_requested_ms",
)
JOB_JSON_COLUMNS = ("inputs", "spec", "result")
ITEM_COLUMNS = (
    "id",
    "owner",
    "title",
    "name",
    "type",
    "type_keywords",
    "tags",
    "folder_id",
    "size",
    "created_ms",
    "modified_ms",
    "path",
    "job_id",
    "description",
    "snippet",
    "properties",
)
ITEM_JSON_COLUMNS = ("type_keywords", "tags", "properties")
ITEM_UPDATABLE = ("title", "description", "snippet", "tags", "type_keywords", "properties", "folder_id")


def _values(columns: tuple[str, ...]) -> str:
    return ", ".join(f":{c}" for c in columns)


def _assignments(columns: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = :{c}" for c in columns)


_IN_SOURCES = "status IN (SELECT value FROM json_each(:sources))"

# --- jobs: reads ----------------------------------------------------------------------------------

INSERT_JOB = f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({_values(JOB_COLUMNS)})"
SELECT_JOB = "SELECT * FROM jobs WHERE job_id = :job_id"
SELECT_JOB_STATUS = "SELECT status FROM jobs WHERE job_id = :job_id"
SELECT_JOB_PID = "SELECT pid FROM jobs WHERE job_id = :job_id"
DELETE_JOB = "DELETE FROM jobs WHERE job_id = :job_id"
COUNT_OWNER_JOBS_IN = (
    "SELECT count(*) FROM jobs WHERE owner = :owner AND status IN (SELECT value FROM json_each(:statuses))"
)
SELECT_JOBS_IN = "SELECT * FROM jobs WHERE status IN (SELECT value FROM json_each(:statuses))"
COUNT_JOBS_IN = "SELECT count(*) FROM jobs WHERE status IN (SELECT value FROM json_each(:statuses))"
COUNT_JOBS_BY_STATUS = "SELECT status, model_type, count(*) FROM jobs GROUP BY status, model_type"
FIRST_CREATED_IN = "SELECT min(created_ms) FROM jobs WHERE status IN (SELECT value FROM json_each(:statuses))"
FIRST_RUN_AFTER_IN = "SELECT min(run_after_ms) FROM jobs WHERE status IN (SELECT value FROM json_each(:statuses))"

_JOB_FILTER = (
    "WHERE (:owner IS NULL OR owner = :owner) "
    "AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses))) "
    "AND (:model_type IS NULL OR model_type = :model_type) "
    "AND (:task IS NULL OR task = :task) "
    "AND (:since_ms IS NULL OR created_ms >= :since_ms) "
    "AND (:until_ms IS NULL OR created_ms <= :until_ms)"
)
COUNT_JOBS = f"SELECT count(*) FROM jobs {_JOB_FILTER}"
JOB_ORDERS = {
    "created_desc": "created_ms DESC, rowid DESC",
    "created_asc": "created_ms ASC, rowid ASC",
    "updated_desc": "updated_ms DESC, rowid DESC",
}
LIST_JOBS = {
    name: f"SELECT * FROM jobs {_JOB_FILTER} ORDER BY {order} LIMIT :limit OFFSET :offset"
    for name, order in JOB_ORDERS.items()
}

# --- jobs: messages ------------------------------------------------------------------------------

LAST_MESSAGE_SEQ = "SELECT coalesce(max(seq), 0) FROM job_messages WHERE job_id = :job_id"
INSERT_MESSAGE = (
    "INSERT INTO job_messages (job_id, seq, type, description, time_ms) "
    "VALUES (:job_id, :seq, :type, :description, :time_ms)"
)
SELECT_MESSAGES = "SELECT seq, type, description, time_ms FROM job_messages WHERE job_id = :job_id ORDER BY seq"
# Pages and the tail walk the (job_id, seq) primary key: a poll costs the same for a job of 10 or 10,000 messages.
SELECT_MESSAGES_FROM = (
    "SELECT seq, type, description, time_ms FROM job_messages WHERE job_id = :job_id "
    "AND seq >= :start ORDER BY seq LIMIT :limit"
)
SELECT_LAST_MESSAGES = (
    "SELECT seq, type, description, time_ms FROM job_messages WHERE job_id = :job_id ORDER BY seq DESC LIMIT :limit"
)
# The per-epoch lines (messages.epoch_line) the job page charts.
SELECT_EPOCH_MESSAGES = (
    "SELECT seq, type, description, time_ms FROM job_messages WHERE job_id = :job_id "
    "AND description LIKE 'Epoch %' ORDER BY seq"
)

# --- jobs: status changes -------------------------------------------------------------------------
# One statement per target status. Each sets `status = :target` and only the columns that target owns, and
# matches only `:sources`, which the store's guard takes from domain.TRANSITIONS. A parameter left NULL keeps
# the column as it is (coalesce); columns that a target always clears are cleared in the text.

_CLAIM_SET = (
    "status = :target, updated_ms = :now, attempts = attempts + 1, started_ms = :now, "
    "heartbeat_ms = :now, boot_id = :boot_id, device = :device, pid = NULL, "
    "progress = coalesce(progress, 0), cancel_requested_ms = NULL"
)
# A job whose request names a processor type (context.processorType: CPU | GPU) waits for a slot of that kind.
# One ordered walk per claimable status (:first, :second) over the index jobs_fifo (status, created_ms), each
# stopping at its first runnable job, then the older of the two: a claim costs the same with 100 or 10,000 jobs
# queued (bench/queue_scale.py), where one walk over both statuses had to sort every queued row.
_OLDEST_RUNNABLE = (
    "SELECT * FROM (SELECT job_id, created_ms, rowid AS row FROM jobs WHERE status = {status} "
    "AND +run_after_ms <= :now "  # unary +: filter while walking jobs_fifo, do not pick jobs_queue
    "AND coalesce(json_extract(spec, '$.context.processor_type'), :processor) = :processor "
    "ORDER BY created_ms, rowid LIMIT 1)"
)
CLAIM_NEXT = (
    f"UPDATE jobs SET {_CLAIM_SET} WHERE job_id = (SELECT job_id FROM ("
    f"{_OLDEST_RUNNABLE.format(status=':first')} UNION ALL {_OLDEST_RUNNABLE.format(status=':second')}) "
    f"ORDER BY created_ms, row LIMIT 1) AND {_IN_SOURCES} RETURNING *"
)
MARK_WAITING = f"UPDATE jobs SET status = :target, updated_ms = :now WHERE {_IN_SOURCES}"

_GUARD = f"WHERE job_id = :job_id AND {_IN_SOURCES} RETURNING *"
REQUEUE = (
    "UPDATE jobs SET status = :target, updated_ms = :now, attempts = coalesce(:attempts, attempts), "
    "interruptions = coalesce(:interruptions, interruptions), "
    "server_crashes = coalesce(:server_crashes, server_crashes), "
    "run_after_ms = coalesce(:run_after_ms, run_after_ms), "
    f"checkpoint_epoch = coalesce(:checkpoint_epoch, checkpoint_epoch), pid = NULL {_GUARD}"
)
WAIT = f"UPDATE jobs SET status = :target, updated_ms = :now {_GUARD}"
START = f"UPDATE jobs SET {_CLAIM_SET} {_GUARD}"
REQUEST_CANCEL = (
    "UPDATE jobs SET status = :target, updated_ms = :now, "
    f"cancel_requested_ms = coalesce(:cancel_requested_ms, :now) {_GUARD}"
)
SUCCEED = (
    "UPDATE jobs SET status = :target, updated_ms = :now, result = :result, progress = 100.0, "
    f"finished_ms = coalesce(:finished_ms, :now), error = NULL, pid = NULL {_GUARD}"
)
FINISH = (
    "UPDATE jobs SET status = :target, updated_ms = :now, finished_ms = coalesce(:finished_ms, :now), "
    "error = :error, progress = NULL, pid = NULL, "
    f"cancel_requested_ms = coalesce(:cancel_requested_ms, cancel_requested_ms) {_GUARD}"
)
_FINISH_FIELDS = frozenset({"finished_ms", "error", "cancel_requested_ms"})

# target -> (its statement, the fields a caller may set in it)
TRANSITIONS: dict[JobStatus, tuple[str, frozenset[str]]] = {
    JobStatus.SUBMITTED: (
        REQUEUE,
        frozenset({"attempts", "interruptions", "server_crashes", "run_after_ms", "checkpoint_epoch"}),
    ),
    JobStatus.WAITING: (WAIT, frozenset()),
    JobStatus.EXECUTING: (START, frozenset({"boot_id", "device"})),
    JobStatus.CANCELLING: (REQUEST_CANCEL, frozenset({"cancel_requested_ms"})),
    JobStatus.SUCCEEDED: (SUCCEED, frozenset({"result", "finished_ms"})),
    JobStatus.CANCELLED: (FINISH, _FINISH_FIELDS),
    JobStatus.FAILED: (FINISH, _FINISH_FIELDS),
    JobStatus.TIMED_OUT: (FINISH, _FINISH_FIELDS),
}

# Not a status change, but guarded the same way: only a running job takes the child's news.
RECORD_PROGRESS = (
    "UPDATE jobs SET updated_ms = :now, progress = coalesce(:progress, progress), "
    "heartbeat_ms = coalesce(:heartbeat_ms, heartbeat_ms), "
    f"checkpoint_epoch = coalesce(:checkpoint_epoch, checkpoint_epoch), pid = coalesce(:pid, pid) "
    f"WHERE job_id = :job_id AND {_IN_SOURCES}"
)
PRUNE_FINISHED = f"DELETE FROM jobs WHERE {_IN_SOURCES} AND finished_ms < :before_ms RETURNING job_id"

# --- items ----------------------------------------------------------------------------------------

SELECT_ITEM = "SELECT * FROM items WHERE id = :id"
SELECT_ITEM_BY_TITLE = "SELECT * FROM items WHERE owner = :owner AND type = :type AND title = :title"
SELECT_ITEM_BY_NAME = "SELECT * FROM items WHERE owner = :owner AND type = :type AND name = :name"
SELECT_ITEM_OF_JOB = "SELECT * FROM items WHERE job_id = :job_id"
LIST_ITEMS = "SELECT * FROM items ORDER BY created_ms DESC"
LIST_OWNER_ITEMS = "SELECT * FROM items WHERE owner = :owner ORDER BY created_ms DESC"
INSERT_ITEM = f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({_values(ITEM_COLUMNS)})"
# An overwrite keeps the id (clients hold it) and the creation time.
REPLACE_ITEM = (
    f"UPDATE items SET {_assignments(tuple(c for c in ITEM_COLUMNS if c not in ('id', 'created_ms')))} WHERE id = :id"
)
UPDATE_ITEM = f"UPDATE items SET {_assignments((*ITEM_UPDATABLE, 'modified_ms'))} WHERE id = :id"
DELETE_ITEM = "DELETE FROM items WHERE id = :id RETURNING *"

# --- tokens ---------------------------------------------------------------------------------------

INSERT_TOKEN = (
    "INSERT INTO tokens (token_hash, username, role, created_ms, expires_ms) "
    "VALUES (:token_hash, :username, :role, :created_ms, :expires_ms)"
)
SELECT_TOKEN = "SELECT username, role, expires_ms, revoked_ms FROM tokens WHERE token_hash = :token_hash"
REVOKE_TOKENS = "UPDATE tokens SET revoked_ms = :now WHERE username = :username AND revoked_ms IS NULL"
LIVE_USERS = (
    "SELECT username, max(role = 'admin') AS admin, count(*) AS n FROM tokens "
    "WHERE revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > :now) "
    "GROUP BY username ORDER BY username"
)

# --- schema migrations ----------------------------------------------------------------------------

CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, sha256 TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
)
APPLIED_MIGRATIONS = "SELECT version, sha256 FROM schema_migrations"
RECORD_MIGRATION = (
    "INSERT INTO schema_migrations (version, name, sha256, applied_ms) VALUES (:version, :name, :sha256, :applied_ms)"
)
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"
