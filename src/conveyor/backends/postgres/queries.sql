-- The PostgreSQL backend's queries, one per "-- name:" section; {schema} is the quoted schema.

-- name: lease
-- A lease on its own commits without waiting for its WAL flush (synchronous_commit off for this
-- transaction only): the ack that follows flushes it, and a lease lost in a server crash only
-- makes the job run again, as an expired lease would. The commit and its lease in one
-- transaction (lease_with_commit) stays synchronous.
SELECT l.*
FROM set_config('synchronous_commit', 'off', true) AS s,
    LATERAL {schema}.lease(
        %(queues)s::text[], %(seconds)s::double precision[], %(now)s::double precision,
        %(limit)s::integer, %(worker)s::text
    ) AS l

-- name: lease_with_commit
SELECT * FROM {schema}.lease(
    %(queues)s::text[], %(seconds)s::double precision[], %(now)s::double precision,
    %(limit)s::integer, %(worker)s::text
)

-- name: commit_and_lease
-- One statement: the commit query (put in by the backend), then the lease, in the
-- statement's own transaction (synchronous, as the commit's). The LATERAL call refers to c, so it
-- runs after the commit; lease() is VOLATILE, so its query sees what commit_batch() wrote. One row
-- per leased job, the commit's answer repeated; one row with NULL lease columns when none.
SELECT c.failed_commits, c.failed_statuses, c.job_ids, c.deliveries, c.woken,
       l.id, l.queue, l.body, l.attempts, l.token, l.lease_deadline, l.enqueued_at
FROM ({commit}) AS c
LEFT JOIN LATERAL {schema}.lease(
    %b::text[], %b::double precision[], %b::double precision,
    %b::integer + 0 * cardinality(c.failed_commits), %b::text
) AS l ON true
ORDER BY l.priority DESC, l.was_available_at

-- name: extend
UPDATE {schema}.jobs
SET available_at = greatest(available_at, %(until)s), extensions = extensions + 1
WHERE id = %(id)s AND token = %(token)s AND available_at >= %(now)s

-- name: commit
SELECT failed_commits, failed_statuses, job_ids, deliveries, woken
FROM {schema}.commit_batch(
    %b::double precision, %b::double precision, %b::integer, %b::text, %b::text[],
    %b::integer[], %b::text[], %b::bigint[], %b::text[], %b::double precision[],
    %b::text[], %b::text[], %b::text[],
    %b::integer[], %b::text[], %b::bigint[], %b::boolean[], %b::boolean[], %b::bytea[], %b::integer[],
    %b::integer[], %b::text[], %b::text[],
    %b::integer[], %b::text[], %b::text[], %b::bytea[],
    %b::double precision[], %b::double precision[], %b::text[],
    %b::integer[], %b::double precision[],
    %b::integer[], %b::text[], %b::text[], %b::bytea[], %b::double precision[],
    %b::integer[], %b::text[], %b::double precision[], %b::text[],
    %b::text[], %b::text[], %b::integer[], %b::text[]
)

-- name: insert_jobs
-- The commit of new jobs only (no settlement, state, cancel, event or idempotency key: a plain
-- enqueue) as one plain statement, without commit_batch()'s generality per row. Without ON
-- CONFLICT either (a quarter of the insert's cost): such jobs have fresh random ids, and should
-- one already exist the statement fails whole and the backend runs commit_batch() instead, which
-- skips it. The data-modifying CTEs run whether or not the final SELECT reads them; it notifies
-- the queues whose jobs are due now (the client composes the payload, '' for none).
WITH added AS (
    INSERT INTO {schema}.jobs (id, queue, body, available_at, enqueued_at)
    SELECT * FROM unnest(
        %b::text[], %b::text[], %b::bytea[], %b::double precision[], %b::double precision[]
    )
), logged AS (
    INSERT INTO {schema}.history (correlation_id, at, kind, name, message_id, attempt, detail)
    SELECT * FROM unnest(
        %b::text[], %b::double precision[], %b::text[], %b::text[], %b::text[], %b::integer[],
        %b::text[]
    )
)
SELECT count(pg_notify(n.channel, n.payload))::integer
FROM (VALUES (%b::text, %b::text)) AS n(channel, payload)
WHERE n.payload <> ''

-- name: dead_letters
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM {schema}.dead_letters
WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text
ORDER BY failed_at, id
LIMIT %(limit)s OFFSET %(offset)s

-- name: redrive
-- Dead letters go back to their queues as fresh jobs (attempts reset, no idempotency key).
-- One whose id a live job holds (the same event delivered again) stays a dead letter: replacing
-- the job would break its lease.
WITH moved AS (
    DELETE FROM {schema}.dead_letters AS d
    WHERE d.id = ANY (%(ids)s::text[]) AND NOT EXISTS (SELECT FROM {schema}.jobs AS j WHERE j.id = d.id)
    RETURNING id, queue, body, enqueued_at
), added AS (
    INSERT INTO {schema}.jobs (id, queue, body, available_at, enqueued_at)
    SELECT id, queue, body, %(at)s, enqueued_at FROM moved
    ON CONFLICT (id) DO NOTHING
)
SELECT count(*)::integer, coalesce(array_agg(DISTINCT queue), '{}') FROM moved

-- name: notify
SELECT pg_notify(%(channel)s, %(payload)s)

-- name: purge_ids
DELETE FROM {schema}.dead_letters WHERE id = ANY (%(ids)s::text[])

-- name: purge_queue
DELETE FROM {schema}.dead_letters WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text

-- name: stats
-- Counts off indexes, never a read of every job row: the backlog's entries of the (queue, priority,
-- available_at) index (index-only), less the leased jobs (few, off the partial jobs_leased index),
-- which that index files under their lease deadline; the oldest ready job is the first unleased
-- due entry of each lane.
SELECT queue.name,
       (backlog.due - leased.due)::integer,
       (backlog.total - backlog.due - (leased.total - leased.due))::integer,
       leased.total::integer,
       (SELECT count(*) FROM {schema}.dead_letters AS d WHERE d.queue = queue.name)::integer,
       (SELECT min(first.available_at)
        FROM (SELECT 0 AS priority
              UNION ALL
              SELECT l.priority FROM {schema}.queue_lanes AS l WHERE l.queue = queue.name) AS lane
        CROSS JOIN LATERAL (
            SELECT j.available_at FROM {schema}.jobs AS j
            WHERE j.queue = queue.name AND j.priority = lane.priority AND j.token IS NULL
              AND j.available_at <= %(now)s
            ORDER BY j.available_at
            LIMIT 1
        ) AS first),
       EXISTS (SELECT FROM {schema}.paused_queues AS p WHERE p.queue = queue.name)
FROM unnest(%(queues)s::text[]) AS queue(name)
CROSS JOIN LATERAL (
    SELECT count(*) AS total, count(*) FILTER (WHERE j.available_at <= %(now)s) AS due
    FROM {schema}.jobs AS j WHERE j.queue = queue.name
) AS backlog
CROSS JOIN LATERAL (
    SELECT count(*) AS total, count(*) FILTER (WHERE j.available_at <= %(now)s) AS due
    FROM {schema}.jobs AS j WHERE j.queue = queue.name AND j.token IS NOT NULL
) AS leased

-- name: queue_names
-- The queues holding jobs or dead letters. A loose index scan (PostgreSQL has no skip scan): each
-- step seeks the first name after the previous one in the queue index, so the cost grows with the
-- number of queues, not of jobs, where SELECT DISTINCT would read every index entry.
WITH RECURSIVE
    job_queue(name) AS (
        SELECT min(queue) FROM {schema}.jobs
        UNION ALL
        SELECT (SELECT min(j.queue) FROM {schema}.jobs AS j WHERE j.queue > job_queue.name)
        FROM job_queue WHERE job_queue.name IS NOT NULL
    ),
    dead_queue(name) AS (
        SELECT min(queue) FROM {schema}.dead_letters
        UNION ALL
        SELECT (SELECT min(d.queue) FROM {schema}.dead_letters AS d WHERE d.queue > dead_queue.name)
        FROM dead_queue WHERE dead_queue.name IS NOT NULL
    )
SELECT name FROM job_queue WHERE name IS NOT NULL
UNION
SELECT name FROM dead_queue WHERE name IS NOT NULL
ORDER BY name

-- name: register_subscriptions
INSERT INTO {schema}.subscriptions (event, queue)
SELECT * FROM unnest(%(events)s::text[], %(queues)s::text[])
ON CONFLICT DO NOTHING

-- name: subscriptions
SELECT event, queue FROM {schema}.subscriptions ORDER BY event, queue

-- name: get_states
SELECT key, value, version FROM {schema}.states WHERE key = ANY (%(keys)s::text[])

-- name: history
SELECT correlation_id, at, kind, name, message_id, attempt, detail
FROM {schema}.history
WHERE correlation_id = %(correlation_id)s
ORDER BY seq

-- name: instances
-- Newest-started first: walks history_by_at backwards and keeps each instance's first entry (no
-- entry of its instance has a lower seq: one probe of history_correlation_id), so a page costs
-- what it shows plus the later steps' entries it passes, however long the history.
SELECT h.correlation_id, h.at,
       (SELECT e.at FROM {schema}.history e
        WHERE e.correlation_id = h.correlation_id ORDER BY e.seq DESC LIMIT 1)
FROM {schema}.history h
WHERE h.at > %(started_after)s
  AND (h.at < %(before_at)s OR (h.at = %(before_at)s AND h.correlation_id < %(before_id)s))
  AND (%(prefix)s::text IS NULL OR starts_with(h.correlation_id, %(prefix)s::text))
  AND NOT EXISTS (
    SELECT 1 FROM {schema}.history f WHERE f.correlation_id = h.correlation_id AND f.seq < h.seq
  )
ORDER BY h.at DESC, h.correlation_id DESC
LIMIT %(limit)s

-- name: instances_by_prefix
-- As instances, for correlation ids from %(low)s up to %(high)s (a prefix's range): read by
-- history_correlation_id, so a narrow prefix is fast whatever the history's size. Only where text
-- sorts by byte (a C collation, see byte_ordered): elsewhere that range may miss ids.
SELECT correlation_id, started_at, updated_at FROM (
    SELECT h.correlation_id, h.at AS started_at,
           (SELECT e.at FROM {schema}.history e
            WHERE e.correlation_id = h.correlation_id ORDER BY e.seq DESC LIMIT 1) AS updated_at
    FROM {schema}.history h
    WHERE h.correlation_id >= %(low)s AND h.correlation_id < %(high)s
      AND NOT EXISTS (
        SELECT 1 FROM {schema}.history f WHERE f.correlation_id = h.correlation_id AND f.seq < h.seq
      )
) AS first_entries
WHERE started_at > %(started_after)s
  AND (started_at < %(before_at)s OR (started_at = %(before_at)s AND correlation_id < %(before_id)s))
ORDER BY started_at DESC, correlation_id DESC
LIMIT %(limit)s

-- name: byte_ordered
-- Whether the database's text sorts by byte, so a prefix is an index range (libc's C, POSIX and
-- C.UTF-8; datlocprovider exists from PostgreSQL 15 on, and 'i' there is ICU).
SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c'
       AND (d.datcollate IN ('C', 'POSIX') OR lower(d.datcollate) IN ('c.utf8', 'c.utf-8'))
FROM pg_database d WHERE d.datname = current_database()

-- name: prune_history
DELETE FROM {schema}.history
WHERE seq = ANY (ARRAY(SELECT seq FROM {schema}.history WHERE at < %(before)s LIMIT %(batch)s))

-- name: purge_idempotency
DELETE FROM {schema}.idempotency
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {schema}.idempotency WHERE expires_at <= %(now)s LIMIT %(batch)s))

-- operations (conveyor.ports.operations) ------------------------------------------------------

-- name: pause
INSERT INTO {schema}.paused_queues (queue, paused_at) VALUES (%(queue)s, %(now)s)
ON CONFLICT (queue) DO NOTHING

-- name: resume
DELETE FROM {schema}.paused_queues WHERE queue = %(queue)s

-- name: paused_queues
SELECT queue, paused_at FROM {schema}.paused_queues ORDER BY queue

-- name: leases
-- Off the partial jobs_leased index (only leased rows): one queue's in id order, or all of them.
SELECT id, queue, attempts, token, worker, leased_at, available_at, extensions
FROM {schema}.jobs
WHERE token IS NOT NULL
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND id > coalesce(%(after)s::text, '')
ORDER BY id
LIMIT %(limit)s

-- name: queue_counts
SELECT queue, minute, sum(completed)::bigint, sum(retried)::bigint, sum(dead)::bigint
FROM {schema}.queue_counts
WHERE queue = ANY (%(queues)s::text[]) AND minute >= %(start)s
GROUP BY queue, minute
ORDER BY queue, minute

-- name: prune_counts
DELETE FROM {schema}.queue_counts WHERE minute < %(before)s

-- name: job
SELECT id, queue, body, attempts, enqueued_at, available_at, priority, idempotency_key, last_error,
       token, worker, leased_at, extensions, cancel_requested
FROM {schema}.jobs WHERE id = %(id)s

-- name: dead_letter
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM {schema}.dead_letters WHERE id = %(id)s

-- name: job_for_key
SELECT job_id FROM {schema}.idempotency
WHERE queue = %(queue)s AND key = %(key)s AND (expires_at IS NULL OR expires_at > %(now)s)

-- name: job_history
SELECT correlation_id, at, kind, name, message_id, attempt, detail
FROM {schema}.history
WHERE message_id = %(id)s
ORDER BY seq

-- name: cancel_jobs
-- Jobs not leased (or whose lease expired) go, their keys freed, and the history entries of
-- those that went are written: one statement, one transaction.
WITH gone AS (
    DELETE FROM {schema}.jobs AS j
    WHERE j.id = ANY (%(ids)s::text[]) AND (j.token IS NULL OR j.available_at < %(now)s)
    RETURNING j.id, j.queue, j.idempotency_key
), freed AS (
    DELETE FROM {schema}.idempotency AS i USING gone
    WHERE i.queue = gone.queue AND i.key = gone.idempotency_key AND i.job_id = gone.id
), logged AS (
    INSERT INTO {schema}.history (correlation_id, at, kind, name, message_id, attempt, detail)
    SELECT h.correlation_id, h.at, h.kind, h.name, h.message_id, h.attempt, h.detail
    FROM unnest(
        %(h_correlation_id)s::text[], %(h_at)s::double precision[], %(h_kind)s::text[],
        %(h_name)s::text[], %(h_message_id)s::text[], %(h_attempt)s::integer[], %(h_detail)s::text[]
    ) WITH ORDINALITY AS h(correlation_id, at, kind, name, message_id, attempt, detail, n)
    WHERE h.message_id IN (SELECT gone.id FROM gone)
    ORDER BY h.n
)
SELECT id FROM gone

-- name: request_cancel
UPDATE {schema}.jobs SET cancel_requested = true WHERE id = %(id)s

-- name: cancel_requests
SELECT id FROM {schema}.jobs WHERE id = ANY (%(ids)s::text[]) AND cancel_requested

-- name: register_worker
INSERT INTO {schema}.workers AS w (id, host, pid, queues, concurrency, started_at, last_seen, settled)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::text[], %(concurrency)s, %(started_at)s,
        %(last_seen)s, %(settled)s)
ON CONFLICT (id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_seen = excluded.last_seen, settled = excluded.settled

-- name: unregister_worker
DELETE FROM {schema}.workers WHERE id = %(id)s

-- name: workers
WITH gone AS (
    DELETE FROM {schema}.workers WHERE last_seen < %(alive_since)s
)
SELECT id, host, pid, queues, concurrency, started_at, last_seen, settled
FROM {schema}.workers
WHERE last_seen >= %(alive_since)s
ORDER BY id
