-- Named queries of the SQLite backend, loaded once at import (see sql.py).
-- Parameters are named; {i} in the per-lane templates is replaced by the lane's position.

-- name: schema_version_table_exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'conveyor_schema';

-- name: schema_version
SELECT max(version) FROM conveyor_schema;

-- name: create_schema_version_table
CREATE TABLE IF NOT EXISTS conveyor_schema (version INTEGER PRIMARY KEY);

-- name: record_schema_version
INSERT OR IGNORE INTO conveyor_schema (version) VALUES (:version);

-- lease --------------------------------------------------------------------------------------------

-- name: due_lanes
-- A read-only look before taking the write lock (idle workers must not queue up for it): the
-- lanes of the queues of :queues not paused that hold a due job, then (priority NULL) the queues
-- holding an expired lease. Lane 0 is probed in every queue, the others only where queue_lanes
-- says the queue has used them.
WITH wanted(queue) AS (
    SELECT value FROM json_each(:queues) WHERE value NOT IN (SELECT queue FROM paused_queues)
), lanes(queue, priority) AS (
    SELECT queue, 0 FROM wanted
    UNION ALL
    SELECT queue_lanes.queue, queue_lanes.priority FROM wanted JOIN queue_lanes USING (queue)
)
SELECT queue, priority FROM lanes
WHERE EXISTS (
    SELECT 1 FROM jobs
    WHERE jobs.queue = lanes.queue AND jobs.priority = lanes.priority AND jobs.leased = 0
      AND jobs.available_at <= :now
)
UNION ALL
SELECT queue, NULL FROM wanted
WHERE EXISTS (
    SELECT 1 FROM jobs WHERE jobs.queue = wanted.queue AND jobs.leased = 1 AND jobs.available_at <= :now
);

-- name: ready_in_lane
-- One lane's oldest available jobs, straight off the jobs_waiting index. The pause is checked
-- again here, under the write lock: a queue paused since due_lanes is left alone.
SELECT * FROM (
    SELECT rowid AS seq, priority, available_at, :lease{i} AS lease FROM jobs
    WHERE queue = :queue{i} AND priority = :priority{i} AND leased = 0 AND available_at <= :now
      AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE queue = :queue{i})
    ORDER BY available_at, rowid
    LIMIT :limit
)

-- name: expired_in_queue
-- One queue's expired leases (few: a worker died or stalled), by priority then deadline.
SELECT * FROM (
    SELECT rowid AS seq, priority, available_at, :lease{i} AS lease FROM jobs
    WHERE queue = :queue{i} AND leased = 1 AND available_at <= :now
      AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE queue = :queue{i})
    ORDER BY priority DESC, available_at, rowid
    LIMIT :limit
)

-- name: ready_in_many_lanes
-- For very many lanes (past SQLite's compound-select limit): correct, but sorts every ready job.
-- :lanes is a JSON array of [queue, priority, lease seconds], :expired an object queue -> lease.
SELECT jobs.rowid AS seq, jobs.priority, jobs.available_at, json_extract(lane.value, '$[2]') AS lease
FROM json_each(:lanes) AS lane
JOIN jobs ON jobs.queue = json_extract(lane.value, '$[0]')
    AND jobs.priority = json_extract(lane.value, '$[1]')
    AND jobs.leased = 0
    AND jobs.available_at <= :now
WHERE jobs.queue NOT IN (SELECT queue FROM paused_queues)
UNION ALL
SELECT jobs.rowid, jobs.priority, jobs.available_at, expired.value
FROM json_each(:expired) AS expired
JOIN jobs ON jobs.queue = expired.key AND jobs.leased = 1 AND jobs.available_at <= :now
WHERE jobs.queue NOT IN (SELECT queue FROM paused_queues)

-- name: lease
-- "ready" is filled in with one ready_in_lane per lane and one expired_in_queue per queue with an
-- expired lease (UNION ALL), or with ready_in_many_lanes.
-- Tokens are base + rank so every leased job gets its own token and the caller can restore the
-- order (highest priority, then oldest) that RETURNING does not keep.
WITH ready AS (
    {ready}
), picked AS (
    SELECT seq, lease, row_number() OVER (ORDER BY priority DESC, available_at, seq) AS rank
    FROM ready
    ORDER BY priority DESC, available_at, seq
    LIMIT :limit
)
UPDATE jobs
SET attempts = attempts + 1,
    leased = 1,
    token = :base + picked.rank,
    available_at = :now + coalesce(jobs.lease_seconds, picked.lease),
    worker = :worker,
    leased_at = :now,
    extensions = 0
FROM picked
WHERE jobs.rowid = picked.seq
RETURNING id, queue, body, attempts, token, available_at, enqueued_at;

-- name: lease_select
-- The same selection for SQLite < 3.35 (no RETURNING): read, then update_leased.
WITH ready AS (
    {ready}
)
SELECT seq, id, queue, body, attempts + 1, :now + coalesce(jobs.lease_seconds, ready.lease), enqueued_at
FROM ready JOIN jobs ON jobs.rowid = ready.seq
ORDER BY ready.priority DESC, ready.available_at, seq
LIMIT :limit;

-- name: update_leased
UPDATE jobs
SET attempts = attempts + 1, leased = 1, token = ?, available_at = ?, worker = ?, leased_at = ?, extensions = 0
WHERE rowid = ?;

-- name: token_counter
SELECT value FROM counters WHERE name = 'token';

-- name: advance_token_counter
UPDATE counters SET value = value + :count WHERE name = 'token';

-- name: extend
UPDATE jobs SET available_at = max(available_at, :until), extensions = extensions + 1
WHERE id = :id AND token = :token AND leased = 1 AND available_at >= :now;

-- commit -------------------------------------------------------------------------------------------

-- name: live_lease
SELECT rowid, queue, idempotency_key FROM jobs
WHERE id = ? AND token = ? AND leased = 1 AND available_at >= ?;

-- name: delete_job
DELETE FROM jobs WHERE rowid = ?;

-- name: ack_live_lease
-- The hot path: check the lease and delete the job in one statement (SQLite >= 3.35).
DELETE FROM jobs WHERE id = ? AND token = ? AND leased = 1 AND available_at >= ?
RETURNING queue, idempotency_key;

-- name: retire_key
UPDATE idempotency_keys SET expires_at = ? WHERE queue = ? AND key = ? AND job_id = ?;

-- name: dead_letter_job
INSERT OR REPLACE INTO dead_letters
    (id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at)
SELECT id, queue, body, ?, ?, ?, attempts, enqueued_at, ? FROM jobs WHERE rowid = ?;

-- name: retry_job
-- A retry without an error keeps the last one.
UPDATE jobs SET leased = 0, available_at = ?, last_error = coalesce(?, last_error) WHERE rowid = ?;

-- name: release_job
UPDATE jobs SET leased = 0, attempts = attempts - 1, available_at = ? WHERE rowid = ?;

-- name: state_version
SELECT version FROM states WHERE key = ?;

-- name: set_state
INSERT INTO states (key, value, version) VALUES (?, ?, 1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = version + 1;

-- name: delete_state
DELETE FROM states WHERE key = ?;

-- name: key_holder
SELECT job_id, expires_at FROM idempotency_keys WHERE queue = ? AND key = ?;

-- name: hold_key
INSERT INTO idempotency_keys (queue, key, job_id, expires_at) VALUES (?, ?, ?, NULL)
ON CONFLICT (queue, key) DO UPDATE SET job_id = excluded.job_id, expires_at = NULL;

-- name: free_key
DELETE FROM idempotency_keys WHERE queue = ? AND key = ?;

-- name: cancel_pending_job
DELETE FROM jobs WHERE id = ? AND leased = 0;

-- name: insert_job
INSERT OR IGNORE INTO jobs (id, queue, body, available_at, enqueued_at, idempotency_key, priority, lease_seconds)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: add_lane
INSERT OR IGNORE INTO queue_lanes (queue, priority) VALUES (?, ?);

-- name: count_settlements
INSERT INTO queue_counts (queue, minute, completed, retried, dead) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (queue, minute) DO UPDATE SET
    completed = completed + excluded.completed,
    retried = retried + excluded.retried,
    dead = dead + excluded.dead;

-- name: insert_history
INSERT INTO history (correlation_id, at, kind, name, message_id, attempt, detail)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: routes
SELECT event, queue FROM subscriptions ORDER BY rowid;

-- name: sweep_expired_keys
DELETE FROM idempotency_keys WHERE expires_at IS NOT NULL AND expires_at <= ?;

-- dead letters -------------------------------------------------------------------------------------

-- name: dead_letters
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM dead_letters
WHERE :queue IS NULL OR queue = :queue
ORDER BY failed_at, id
LIMIT :limit OFFSET :offset;

-- name: redrive_movable
-- Dead letters that can go back: a live job with the same id (say, the same event delivered again)
-- keeps its place and the dead letter stays where it is.
SELECT id FROM dead_letters
WHERE id IN (SELECT value FROM json_each(:ids))
  AND id NOT IN (SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)));

-- name: redrive_insert
INSERT INTO jobs (id, queue, body, available_at, enqueued_at)
SELECT id, queue, body, :available_at, enqueued_at FROM dead_letters
WHERE id IN (SELECT value FROM json_each(:ids))
ORDER BY failed_at, id;

-- name: redrive_delete
DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(:ids));

-- name: purge_ids
DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(:ids));

-- name: purge_queue
DELETE FROM dead_letters WHERE :queue IS NULL OR queue = :queue;

-- name: queue_stats
-- Counts off indexes, never the rows: per lane, the waiting jobs due and not due off the covering
-- jobs_waiting index (the two ranges split the lane's entries, so a stats call walks each index
-- entry of the queue once). For 1,000,000 jobs in one queue: 54-57 ms at commit 6d7080a with
-- other work on the machine's two cores (tests/backends/sqlite/scale_check.py), 46 ms idle with
-- the index before leased joined its key (the same query timed alone). The
-- leased ones (expired leases counted as leased) off jobs_leased. A correlated count per lane,
-- not a join: joined, SQLite picked a non-covering plan for one of the two ranges (165 ms).
WITH lanes(priority) AS (
    SELECT 0 UNION SELECT priority FROM queue_lanes WHERE queue = :queue
)
SELECT
    sum((
        SELECT count(*) FROM jobs
        WHERE queue = :queue AND priority = lanes.priority AND leased = 0 AND available_at <= :now
    )),
    sum((
        SELECT count(*) FROM jobs
        WHERE queue = :queue AND priority = lanes.priority AND leased = 0 AND available_at > :now
    )),
    (SELECT count(*) FROM jobs WHERE queue = :queue AND leased = 1),
    min((
        SELECT available_at FROM jobs
        WHERE queue = :queue AND priority = lanes.priority AND leased = 0 AND available_at <= :now
        ORDER BY available_at LIMIT 1
    )),
    (SELECT count(*) FROM dead_letters WHERE queue = :queue),
    EXISTS (SELECT 1 FROM paused_queues WHERE queue = :queue)
FROM lanes;

-- name: queue_names
-- The queues holding jobs or dead letters. A loose index scan: each step seeks the first name
-- after the previous one in a queue index (jobs_waiting, jobs_leased, dead_letters_by_queue), so
-- the cost grows with the number of queues, not of jobs (0.4 ms over 500,000 jobs in 5 queues,
-- where SELECT DISTINCT walks the index: 18 ms; commit d245c7e, with the one jobs index of then;
-- the command was not recorded, not re-measured).
WITH RECURSIVE
    waiting_queue(name) AS (
        SELECT min(queue) FROM jobs WHERE leased = 0
        UNION ALL
        SELECT (SELECT min(jobs.queue) FROM jobs WHERE jobs.leased = 0 AND jobs.queue > waiting_queue.name)
        FROM waiting_queue WHERE waiting_queue.name IS NOT NULL
    ),
    leased_queue(name) AS (
        SELECT min(queue) FROM jobs WHERE leased = 1
        UNION ALL
        SELECT (SELECT min(jobs.queue) FROM jobs WHERE jobs.leased = 1 AND jobs.queue > leased_queue.name)
        FROM leased_queue WHERE leased_queue.name IS NOT NULL
    ),
    dead_queue(name) AS (
        SELECT min(queue) FROM dead_letters
        UNION ALL
        SELECT (SELECT min(d.queue) FROM dead_letters AS d WHERE d.queue > dead_queue.name)
        FROM dead_queue WHERE dead_queue.name IS NOT NULL
    )
SELECT name FROM waiting_queue WHERE name IS NOT NULL
UNION
SELECT name FROM leased_queue WHERE name IS NOT NULL
UNION
SELECT name FROM dead_queue WHERE name IS NOT NULL
ORDER BY name;

-- topics, states, history --------------------------------------------------------------------------

-- name: register_subscription
INSERT OR IGNORE INTO subscriptions (event, queue) VALUES (?, ?);

-- name: subscriptions
SELECT event, queue FROM subscriptions ORDER BY rowid;

-- name: get_states
SELECT key, value, version FROM states WHERE key IN (SELECT value FROM json_each(?));

-- name: history
SELECT correlation_id, at, kind, name, message_id, attempt, detail FROM history
WHERE correlation_id = ? ORDER BY rowid;

-- name: prune_history
DELETE FROM history WHERE at < ?;

-- name: instances
-- Newest-started first: walks history_by_time backwards and keeps each instance's first entry
-- (none of its instance written before it: one probe of history_by_correlation), so a page costs
-- what it shows plus the entries of later steps it passes, however long the history.
-- Parameters: started after, before (at, correlation id), limit.
SELECT h.correlation_id, h.at,
       (SELECT e.at FROM history e WHERE e.correlation_id = h.correlation_id ORDER BY e.rowid DESC LIMIT 1)
FROM history h
WHERE h.at > ?1 AND (h.at < ?2 OR (h.at = ?2 AND h.correlation_id < ?3))
  AND NOT EXISTS (SELECT 1 FROM history f WHERE f.correlation_id = h.correlation_id AND f.rowid < h.rowid)
ORDER BY h.at DESC, h.correlation_id DESC
LIMIT ?4;

-- name: instances_by_prefix
-- As instances, for correlation ids from ?4 up to ?5 (a prefix's range): read by
-- history_by_correlation, so a narrow prefix is fast whatever the history's size.
SELECT correlation_id, started_at, updated_at FROM (
    SELECT h.correlation_id, h.at AS started_at,
           (SELECT e.at FROM history e WHERE e.correlation_id = h.correlation_id ORDER BY e.rowid DESC LIMIT 1)
               AS updated_at
    FROM history h INDEXED BY history_by_correlation
    WHERE h.correlation_id >= ?4 AND h.correlation_id < ?5
      AND NOT EXISTS (SELECT 1 FROM history f WHERE f.correlation_id = h.correlation_id AND f.rowid < h.rowid)
)
WHERE started_at > ?1 AND (started_at < ?2 OR (started_at = ?2 AND correlation_id < ?3))
ORDER BY started_at DESC, correlation_id DESC
LIMIT ?6;

-- operations ---------------------------------------------------------------------------------------

-- name: pause
INSERT OR IGNORE INTO paused_queues (queue, paused_at) VALUES (?, ?);

-- name: resume
DELETE FROM paused_queues WHERE queue = ?;

-- name: paused_queues
SELECT queue, paused_at FROM paused_queues ORDER BY queue;

-- name: leases
-- The where placeholder is "queue = :queue AND" or nothing, after is "AND id > :after" or nothing
-- (see sql.leases_statement). The leased jobs of the queue (or of all) are read off jobs_leased,
-- as many entries as leases are held, and sorted by id: left to choose, SQLite walks the id index
-- of every job instead, a scan of the table when few jobs are leased.
SELECT id, queue, attempts, token, worker, leased_at, available_at, extensions
FROM jobs INDEXED BY jobs_leased
WHERE {where} leased = 1 {after}
ORDER BY id
LIMIT :limit;

-- name: queue_counts
SELECT queue, minute, completed, retried, dead FROM queue_counts
WHERE queue IN (SELECT value FROM json_each(:queues)) AND minute >= :since
ORDER BY queue, minute;

-- name: prune_counts
DELETE FROM queue_counts WHERE minute < ?;

-- name: job
SELECT id, queue, body, attempts, enqueued_at, available_at, priority, idempotency_key, last_error,
       cancel_requested, leased, token, worker, leased_at, extensions
FROM jobs WHERE id = ?;

-- name: dead_letter
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM dead_letters WHERE id = ?;

-- name: job_history
SELECT correlation_id, at, kind, name, message_id, attempt, detail FROM history
WHERE message_id = ? ORDER BY rowid;

-- name: cancellable_job
-- A job not leased, or whose lease expired and was not taken again.
SELECT rowid, queue, idempotency_key FROM jobs
WHERE id = ? AND NOT (leased = 1 AND available_at >= ?);

-- name: free_job_key
DELETE FROM idempotency_keys WHERE queue = ? AND key = ? AND job_id = ?;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1 WHERE id = ?;

-- name: cancel_requests
SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND cancel_requested = 1;

-- name: register_worker
INSERT OR REPLACE INTO workers (id, host, pid, queues, concurrency, started_at, last_seen, settled)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: unregister_worker
DELETE FROM workers WHERE id = ?;

-- name: forget_workers
DELETE FROM workers WHERE last_seen < ?;

-- name: workers
SELECT id, host, pid, queues, concurrency, started_at, last_seen, settled FROM workers ORDER BY id;

-- name: find_dead_letters
-- The where placeholder holds the filter's dead_where_* conditions below (see
-- sql.dead_letters_statement); newest first, walking dead_letters_by_queue
-- (with a queue) or dead_letters_by_time backwards, both ending in the primary key id.
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM dead_letters
WHERE 1 {where}
ORDER BY failed_at DESC, id DESC
LIMIT :limit;

-- name: count_dead_letters
SELECT count(*) FROM dead_letters WHERE 1 {where};

-- The conditions of a DeadLetterFilter, each put in the queries above when the filter has it.

-- name: dead_where_queue
AND queue = :queue

-- name: dead_where_error_type
-- the type exactly, or its last dotted part ("PaymentDeclined" matches "shop.errors.PaymentDeclined")
AND (error_type = :error_type OR substr(error_type, -length(:error_type) - 1) = '.' || :error_type)

-- name: dead_where_since
AND failed_at >= :since

-- name: dead_where_until
AND failed_at < :until

-- name: dead_where_text
-- :text is the substring with LIKE's metacharacters escaped, between two %: SQLite's LIKE folds
-- ASCII letters only, as ascii_lower does, and over scale_check.py's 100,000 dead letters a page
-- that matches nothing took 31 ms where instr(lower(...)) took 50 (the two queries timed by hand
-- at commit b553fa9; that script was not kept)
AND error_message LIKE :text ESCAPE '!'

-- name: dead_where_before
AND (failed_at, id) < (:before_at, :before_id)
