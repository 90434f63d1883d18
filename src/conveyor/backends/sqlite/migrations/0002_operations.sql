-- conveyor SQLite schema, version 2: the operations port (priority lanes, per-job leases, pause,
-- lease details, settlement counts, cancel requests, the worker registry, dead-letter search).
-- Runs under the migration's write lock after re-reading the version, so the ALTERs run once.

ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- The job's own visibility timeout (NULL: its queue's).
ALTER TABLE jobs ADD COLUMN lease_seconds REAL;
-- The lease in force (meaningful while leased = 1): who took it, when, how often it was extended.
ALTER TABLE jobs ADD COLUMN worker TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN leased_at REAL;
ALTER TABLE jobs ADD COLUMN extensions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

-- Jobs not leased, one ordered lane per priority: lease() reads each lane's oldest due jobs off
-- this index and merges the lanes, so no lease sorts a queue's backlog. Leased jobs are in the
-- index below instead, so a lease moves a job's entry from one to the other, and an ack deletes
-- it there: per job no more index work than the single (queue, available_at) index this replaces.
-- The constant leased column is in both keys for SQLite's planner (3.40): without it a query
-- naming leased reads the table rows, and sorts a lane's due jobs rather than walk them in order.
DROP INDEX IF EXISTS jobs_by_queue_available;
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (queue, priority, leased, available_at) WHERE leased = 0;
-- Leased jobs by deadline: lease() takes the expired ones back, stats() and leases() read them.
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (queue, leased, available_at) WHERE leased = 1;

-- The lanes other than 0 each queue has used, written when a job of such a priority is enqueued
-- (never deleted: at most 20 rows a queue). Lane 0 is always probed and has no row.
CREATE TABLE IF NOT EXISTS queue_lanes (
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    PRIMARY KEY (queue, priority)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS paused_queues (
    queue TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
) WITHOUT ROWID;

-- Settlements per queue and minute bucket, one upsert per (queue, bucket) per commit batch.
CREATE TABLE IF NOT EXISTS queue_counts (
    queue TEXT NOT NULL,
    minute REAL NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    retried INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_counts_by_minute ON queue_counts (minute);

CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    queues TEXT NOT NULL, -- JSON array
    concurrency INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    settled INTEGER NOT NULL
) WITHOUT ROWID;

-- A job's history (job_history), and dead letters newest first over every queue (per queue:
-- dead_letters_by_queue, whose entries end in the primary key id).
CREATE INDEX IF NOT EXISTS history_by_message ON history (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (failed_at);
