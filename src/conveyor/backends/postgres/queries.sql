-- The PostgreSQL backend's queries, one per "-- name:" section; {schema} is the quoted schema.

-- name: lease
-- Oldest available jobs first across the queues: each queue's own index range is read in order
-- (skipping rows other workers hold), then the first `limit` of those are leased in one UPDATE.
WITH queue AS (
    SELECT * FROM unnest(%(queues)s::text[], %(seconds)s::double precision[]) AS q(name, seconds)
), picked AS MATERIALIZED (
    SELECT candidate.id, candidate.available_at, queue.seconds
    FROM queue CROSS JOIN LATERAL (
        SELECT j.id, j.available_at
        FROM {schema}.jobs AS j
        WHERE j.queue = queue.name AND j.available_at <= %(now)s
        ORDER BY j.available_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS candidate
    ORDER BY candidate.available_at
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET attempts = j.attempts + 1,
    token = nextval('{schema}.lease_tokens'),
    available_at = %(now)s + picked.seconds
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.queue, j.body, j.attempts, j.token, j.available_at, j.enqueued_at,
          picked.available_at

-- name: extend
UPDATE {schema}.jobs
SET available_at = greatest(available_at, %(until)s)
WHERE id = %(id)s AND token = %(token)s AND available_at >= %(now)s

-- name: commit
SELECT failed_commits, failed_statuses, job_ids, deliveries, woken
FROM {schema}.commit_batch(
    %b::double precision, %b::double precision, %b::integer, %b::text,
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

-- name: dead_letters
SELECT id, queue, body, error_type, error_message, error_traceback, attempts, enqueued_at, failed_at
FROM {schema}.dead_letters
WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text
ORDER BY failed_at, id
LIMIT %(limit)s OFFSET %(offset)s

-- name: redrive
-- Dead letters go back to their queues as fresh jobs (attempts reset, no idempotency key).
WITH moved AS (
    DELETE FROM {schema}.dead_letters WHERE id = ANY (%(ids)s::text[])
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
