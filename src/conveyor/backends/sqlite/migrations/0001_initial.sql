-- conveyor SQLite schema, version 1.
-- Every statement is idempotent (IF NOT EXISTS) so two processes creating a fresh file at once agree.

-- Jobs waiting, delayed, retrying or leased. A lease moves available_at to the lease deadline, so an
-- expired lease is "available" by the same rule as a delayed job. The rowid orders jobs that become
-- available at the same time (first in, first out).
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    available_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    leased INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    last_error TEXT
);
-- The only index lease() needs: per queue, oldest available first (rowid is implied).
CREATE INDEX IF NOT EXISTS jobs_by_queue_available ON jobs (queue, available_at);

-- An idempotency key is held by its job while the job exists (expires_at NULL), then for the
-- retention window after its ack or dead-lettering (expires_at set). Cancelling frees it at once.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry
    ON idempotency_keys (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    error_traceback TEXT,
    attempts INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    failed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_by_queue ON dead_letters (queue, failed_at);

-- Durable (event, queue) routes; the rowid keeps registration order.
CREATE TABLE IF NOT EXISTS subscriptions (
    event TEXT NOT NULL,
    queue TEXT NOT NULL,
    UNIQUE (event, queue)
);

CREATE TABLE IF NOT EXISTS states (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;

-- Workflow history; the rowid is the write order.
CREATE TABLE IF NOT EXISTS history (
    correlation_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    message_id TEXT,
    attempt INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS history_by_correlation ON history (correlation_id);
CREATE INDEX IF NOT EXISTS history_by_time ON history (at);

-- Fencing tokens come from one counter shared by every process using the file.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES ('token', 0);
