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
        %(limit)s::integer
    ) AS l

-- name: lease_with_commit
SELECT * FROM {schema}.lease(
    %(queues)s::text[], %(seconds)s::double precision[], %(now)s::double precision,
    %(limit)s::integer
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
    %b::integer + 0 * cardinality(c.failed_commits)
) AS l ON true
ORDER BY l.was_available_at

-- name: extend
UPDATE {schema}.jobs
SET available_at = greatest(available_at, %(until)s)
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
    SELECT id, queue, body, %(now)s, enqueued_at FROM moved
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
SELECT queue.name,
       count(j.id) FILTER (WHERE j.token IS NULL AND j.available_at <= %(now)s)::integer,
       count(j.id) FILTER (WHERE j.token IS NULL AND j.available_at > %(now)s)::integer,
       count(j.id) FILTER (WHERE j.token IS NOT NULL)::integer,
       (SELECT count(*) FROM {schema}.dead_letters AS d WHERE d.queue = queue.name)::integer,
       min(j.available_at) FILTER (WHERE j.token IS NULL AND j.available_at <= %(now)s)
FROM unnest(%(queues)s::text[]) AS queue(name)
LEFT JOIN {schema}.jobs AS j ON j.queue = queue.name
GROUP BY queue.name

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
-- An operator's query (workflow listings): it reads the whole history table.
SELECT correlation_id, min(at) AS started_at, max(at)
FROM {schema}.history
GROUP BY correlation_id
HAVING min(at) > %(started_after)s
ORDER BY started_at DESC, correlation_id DESC
LIMIT %(limit)s

-- name: prune_history
DELETE FROM {schema}.history
WHERE seq = ANY (ARRAY(SELECT seq FROM {schema}.history WHERE at < %(before)s LIMIT %(batch)s))

-- name: purge_idempotency
DELETE FROM {schema}.idempotency
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {schema}.idempotency WHERE expires_at <= %(now)s LIMIT %(batch)s))
