-- gpjobs schema v1: jobs, their messages, published items, API tokens.
-- Append-only: never edit a migration that has shipped; add NNNN_<name>.sql instead.

CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY,
    owner               TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN (
                            'esriJobSubmitted', 'esriJobWaiting', 'esriJobExecuting', 'esriJobSucceeded',
                            'esriJobFailed', 'esriJobTimedOut', 'esriJobCancelling', 'esriJobCancelled')),
    model_type          TEXT NOT NULL,
    inputs              TEXT NOT NULL DEFAULT '{}',   -- raw submitted values (JSON object)
    spec                TEXT NOT NULL DEFAULT '{}',   -- normalised parameters -> the child's JobSpec (JSON)
    progress            REAL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 3,
    interruptions       INTEGER NOT NULL DEFAULT 0,
    result              TEXT,                         -- JSON: {"id": ...} | {"uri": ...}
    error               TEXT,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL,
    started_ms          INTEGER,
    finished_ms         INTEGER,
    run_after_ms        INTEGER NOT NULL DEFAULT 0,
    device              TEXT,
    boot_id             TEXT,
    pid                 INTEGER,
    heartbeat_ms        INTEGER,
    checkpoint_epoch    INTEGER,
    cancel_requested_ms INTEGER
);
-- The claim query: FIFO over claimable jobs.
CREATE INDEX jobs_queue ON jobs (status, run_after_ms, created_ms);
CREATE INDEX jobs_owner ON jobs (owner, created_ms);
CREATE INDEX jobs_created ON jobs (created_ms);

CREATE TABLE job_messages (
    job_id      TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    type        TEXT NOT NULL,
    description TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE items (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    title         TEXT NOT NULL,
    name          TEXT NOT NULL,
    type          TEXT NOT NULL,
    type_keywords TEXT NOT NULL DEFAULT '[]',
    tags          TEXT NOT NULL DEFAULT '[]',
    folder_id     TEXT,
    size          INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    modified_ms   INTEGER NOT NULL,
    path          TEXT NOT NULL,
    -- The job that last published it: unique so that a repeated publish of one job is a no-op.
    job_id        TEXT UNIQUE REFERENCES jobs (job_id) ON DELETE SET NULL,
    description   TEXT,
    snippet       TEXT,
    properties    TEXT NOT NULL DEFAULT '{}'
);
-- One item per owner and file name: overwrite_model replaces it, otherwise a clash is an error.
CREATE UNIQUE INDEX items_owner_name ON items (owner, type, name);

CREATE TABLE tokens (
    token_hash   TEXT PRIMARY KEY,                   -- sha256 hex; the plaintext is never stored
    username     TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER,
    revoked_ms   INTEGER
);
CREATE INDEX tokens_user ON tokens (username);
