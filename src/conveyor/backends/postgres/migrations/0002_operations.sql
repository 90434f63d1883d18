-- conveyor's PostgreSQL schema, version 2: the operations port (issue 16). Applied in one
-- transaction to a fresh schema right after version 1, or to an existing version-1 schema: the new
-- columns have constant defaults (no table rewrite); the jobs queue index is rebuilt with priority.

-- priority: higher first among a queue's due jobs. lease_seconds: the job's own visibility timeout
-- (NULL: its queue's). worker, leased_at, extensions: the current lease, for leases(); a lease
-- taken before this version shows worker '' and leased_at 0. cancel_requested: request_cancel().
ALTER TABLE {schema}.jobs
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_seconds double precision,
    ADD COLUMN worker text NOT NULL DEFAULT '',
    ADD COLUMN leased_at double precision NOT NULL DEFAULT 0,
    ADD COLUMN extensions integer NOT NULL DEFAULT 0,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

-- One ordered lane per (queue, priority): lease() reads each lane's oldest due jobs off this index
-- and merges them, never sorting a queue's backlog by priority.
DROP INDEX {schema}.jobs_queue_available_at;
CREATE INDEX jobs_queue_priority_available_at ON {schema}.jobs (queue, priority, available_at);

-- The leased jobs (few: at most the workers' concurrency, plus expired leases not taken again):
-- leases() pages through them by id, stats() counts them. A retry or release leaves it.
CREATE INDEX jobs_leased ON {schema}.jobs (queue, id) WHERE token IS NOT NULL;

-- The lanes other than 0 each queue has used, written by the commit that enqueues a job with a
-- priority other than 0 (lane 0 is always probed). A lane that emptied stays: probing it costs one
-- index descent.
CREATE TABLE {schema}.queue_lanes (
    queue    text NOT NULL,
    priority integer NOT NULL,
    PRIMARY KEY (queue, priority)
);

CREATE TABLE {schema}.paused_queues (
    queue     text PRIMARY KEY,
    paused_at double precision NOT NULL
);

-- Settlements per queue and minute. Each connection (writer: its server pid) keeps rows of its
-- own, summed on read: one row every worker updated would serialize their commits on its lock
-- until each transaction's WAL flush. A reused pid only adds into an older row, which the sum
-- does not mind.
CREATE TABLE {schema}.queue_counts (
    queue     text NOT NULL,
    minute    double precision NOT NULL,
    writer    integer NOT NULL,
    completed bigint NOT NULL DEFAULT 0,
    retried   bigint NOT NULL DEFAULT 0,
    dead      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute, writer)
);

CREATE TABLE {schema}.workers (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    queues      text[] NOT NULL,
    concurrency integer NOT NULL,
    started_at  double precision NOT NULL,
    last_seen   double precision NOT NULL,
    settled     bigint NOT NULL
);

-- Every dead letter newest first (failed_at DESC, id DESC: this index read backwards); one queue's
-- walks dead_letters_queue_failed_at backwards.
CREATE INDEX dead_letters_failed_at ON {schema}.dead_letters (failed_at, id);

-- job_history(): a job's entries.
CREATE INDEX history_message_id ON {schema}.history (message_id, seq) WHERE message_id IS NOT NULL;

-- lease: as in version 1, per lane. The lanes of each queue that is not paused (0, and those in
-- queue_lanes) are each read in order as an index range, skipping rows other workers hold; the
-- first p_limit by priority, then available_at, are leased, each for its own lease_seconds or its
-- queue's, recording p_worker and p_now. With only lane 0 and no pause that is version 1's plan
-- plus two probes of tiny tables.
DROP FUNCTION {schema}.lease(text[], double precision[], double precision, integer);
CREATE FUNCTION {schema}.lease(
    p_queues text[], p_seconds double precision[], p_now double precision, p_limit integer,
    p_worker text
) RETURNS TABLE (
    id text, queue text, body bytea, attempts integer, token bigint,
    lease_deadline double precision, enqueued_at double precision,
    priority integer, was_available_at double precision
) LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH wanted AS (
        SELECT q.name, q.seconds FROM unnest(p_queues, p_seconds) AS q(name, seconds)
        WHERE NOT EXISTS (SELECT FROM {schema}.paused_queues AS p WHERE p.queue = q.name)
    ), lanes AS (
        SELECT w.name, w.seconds, 0 AS priority FROM wanted AS w
        UNION ALL
        SELECT w.name, w.seconds, l.priority
        FROM wanted AS w JOIN {schema}.queue_lanes AS l ON l.queue = w.name
    ), picked AS MATERIALIZED (
        SELECT candidate.row_id, candidate.available_at, lanes.priority, lanes.seconds
        FROM lanes CROSS JOIN LATERAL (
            SELECT j.ctid AS row_id, j.available_at
            FROM {schema}.jobs AS j
            WHERE j.queue = lanes.name AND j.priority = lanes.priority AND j.available_at <= p_now
            ORDER BY j.available_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) AS candidate
        ORDER BY lanes.priority DESC, candidate.available_at
        LIMIT p_limit
    ), leased AS (
        UPDATE {schema}.jobs AS j
        SET attempts = j.attempts + 1,
            token = nextval('{schema}.lease_tokens'),
            available_at = p_now + coalesce(j.lease_seconds, picked.seconds),
            worker = p_worker,
            leased_at = p_now,
            extensions = 0
        FROM picked
        WHERE j.ctid = picked.row_id
        RETURNING j.id, j.queue, j.body, j.attempts, j.token, j.available_at, j.enqueued_at,
                  j.priority, picked.available_at AS was_available_at
    )
    SELECT * FROM leased ORDER BY leased.priority DESC, leased.was_available_at;
END
$$;

-- commit_batch: as in version 1 (its comments there), plus: new jobs carry their priority and
-- lease_seconds (a priority other than 0 records its lane in queue_lanes), and the settlements that
-- applied are counted per (queue, minute) in queue_counts under this connection's writer id.
DROP FUNCTION {schema}.commit_batch(
    double precision, double precision, integer, text, text[],
    integer[], text[], bigint[], text[], double precision[], text[], text[], text[],
    integer[], text[], bigint[], boolean[], boolean[], bytea[], integer[],
    integer[], text[], text[],
    integer[], text[], text[], bytea[], double precision[], double precision[], text[],
    integer[], text[], text[], bytea[], double precision[],
    integer[], text[], double precision[], text[], text[], text[], integer[], text[]
);

-- commit_batch: apply a batch of commits in one statement (one round trip, one transaction).
--
-- Every part of a commit arrives as parallel arrays tagged with the commit's index (c). The client
-- groups commits so that no two commits of one call settle the same job or write the same state
-- key, and no cancel follows a commit that creates jobs; applying each part set-wise (all
-- settlements, then all state writes, cancels, new jobs, events, history) is then the same as
-- applying the commits one after the other, as the in-memory reference does. The remaining
-- interactions (a job a later commit settles or deletes) are handled below. A STALE or CONFLICT
-- commit applies nothing.
--
-- Returns the failed commits with their status ('stale' or 'conflict'), the id of every new job
-- with an idempotency key, in input order (the holder's id on a hit, NULL in a failed commit), the
-- number of subscription queues each event fanned out into, and the queues to wake: p_wake (the
-- client's new jobs available now) plus those that got fanned-out, released or retried jobs.
-- They are also sent with pg_notify on p_channel (newline-separated, or '*' if too long).
CREATE FUNCTION {schema}.commit_batch(
    p_now double precision,
    p_retention double precision,
    p_purge integer,
    p_channel text,
    p_wake text[],
    s_commit integer[], s_id text[], s_token bigint[], s_outcome text[],
    s_available_at double precision[],
    s_error_type text[], s_error_message text[], s_error_traceback text[],
    w_commit integer[], w_key text[], w_expected bigint[], w_delete boolean[], w_reset boolean[],
    w_value bytea[], w_sets integer[],
    x_commit integer[], x_queue text[], x_key text[],
    j_commit integer[], j_id text[], j_queue text[], j_body bytea[],
    j_available_at double precision[], j_enqueued_at double precision[], j_key text[],
    j_priority integer[], j_lease_seconds double precision[],
    e_commit integer[], e_id text[], e_event text[], e_body bytea[], e_emitted_at double precision[],
    h_commit integer[], h_correlation_id text[], h_at double precision[], h_kind text[],
    h_name text[], h_message_id text[], h_attempt integer[], h_detail text[],
    OUT failed_commits integer[], OUT failed_statuses text[], OUT job_ids text[],
    OUT deliveries integer[], OUT woken text[]
) LANGUAGE plpgsql
-- Every statement below reaches jobs by key: never let stale statistics pick a scan of the table.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    conflicted integer[] := '{}';
    settled integer[] := '{}';
    removed text[] := '{}';   -- ids of jobs acked, dead-lettered or cancelled, with their commit
    removed_at integer[] := '{}';
    failed integer[] := '{}';
    keyed boolean;
    claimed_queue text[] := '{}';  -- idempotency keys claimed by this batch, with the claiming job
    claimed_key text[] := '{}';
    claimed_id text[] := '{}';
    payload text;
BEGIN
    failed_commits := '{}';
    failed_statuses := '{}';
    job_ids := '{}';
    deliveries := '{}';
    woken := p_wake;

    -- 1. Expected state versions. Every written key is locked (in key order, so two batches cannot
    --    deadlock) before it is read, so no other commit can change it between check and write.
    IF cardinality(w_key) > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_channel || ':' || k, 0))
        FROM (SELECT DISTINCT k FROM unnest(w_key) AS k ORDER BY k) AS keys;
        SELECT coalesce(array_agg(DISTINCT w.c), '{}') INTO conflicted
        FROM unnest(w_commit, w_key, w_expected) AS w(c, key, expected)
        LEFT JOIN {schema}.states AS s ON s.key = w.key
        WHERE w.expected IS NOT NULL AND coalesce(s.version, 0) <> w.expected;
    END IF;

    -- 2. Settlements. A settlement applies only with the job's current token and a live lease;
    --    the row lock the DELETE/UPDATE takes keeps a concurrent lease() away meanwhile.
    IF cardinality(s_id) > 0 THEN
        WITH s AS MATERIALIZED (
            SELECT * FROM unnest(
                s_commit, s_id, s_token, s_outcome, s_available_at,
                s_error_type, s_error_message, s_error_traceback
            ) AS s(c, id, token, outcome, available_at, error_type, error_message, error_traceback)
            WHERE s.c <> ALL (conflicted)
        ), done AS (
            DELETE FROM {schema}.jobs AS j USING s
            WHERE s.outcome IN ('ack', 'dead')
              AND j.id = s.id AND j.token = s.token AND j.available_at >= p_now
            RETURNING s.c, s.outcome, s.error_type, s.error_message, s.error_traceback,
                      j.id, j.queue, j.attempts, j.enqueued_at, j.idempotency_key,
                      CASE WHEN s.outcome = 'dead' THEN j.body END AS body
        ), ended AS (
            UPDATE {schema}.jobs AS j SET
                token = NULL,
                attempts = CASE WHEN s.outcome = 'release' THEN j.attempts - 1 ELSE j.attempts END,
                available_at = CASE WHEN s.outcome = 'release' THEN p_now
                                    ELSE coalesce(s.available_at, p_now) END,
                last_error = CASE WHEN s.error_type IS NULL THEN j.last_error
                                  ELSE json_build_object('type', s.error_type,
                                                         'message', s.error_message,
                                                         'traceback', s.error_traceback)::text END
            FROM s
            WHERE s.outcome IN ('retry', 'release')
              AND j.id = s.id AND j.token = s.token AND j.available_at >= p_now
            RETURNING s.c, s.outcome, j.queue, j.available_at
        ), dead AS (
            INSERT INTO {schema}.dead_letters AS d (
                id, queue, error_type, error_message, error_traceback,
                attempts, enqueued_at, failed_at, body
            )
            SELECT id, queue, error_type, error_message, error_traceback,
                   attempts, enqueued_at, p_now, body
            FROM done WHERE outcome = 'dead'
            ON CONFLICT (id) DO UPDATE SET
                queue = excluded.queue, error_type = excluded.error_type,
                error_message = excluded.error_message, error_traceback = excluded.error_traceback,
                attempts = excluded.attempts, enqueued_at = excluded.enqueued_at,
                failed_at = excluded.failed_at, body = excluded.body
        ), retired AS (
            UPDATE {schema}.idempotency AS i SET job_id = done.id, expires_at = p_now + p_retention
            FROM done
            WHERE done.idempotency_key IS NOT NULL
              AND i.queue = done.queue AND i.key = done.idempotency_key
        ), counted AS (
            -- one row per queue and batch; the bucket is COUNT_BUCKET (60 s) of ports.operations
            INSERT INTO {schema}.queue_counts AS n (queue, minute, writer, completed, retried, dead)
            SELECT t.queue, floor(p_now / 60) * 60, pg_backend_pid(),
                   count(*) FILTER (WHERE t.outcome = 'ack'),
                   count(*) FILTER (WHERE t.outcome = 'retry'),
                   count(*) FILTER (WHERE t.outcome = 'dead')
            FROM (
                SELECT done.queue, done.outcome FROM done
                UNION ALL
                SELECT ended.queue, ended.outcome FROM ended WHERE ended.outcome = 'retry'
            ) AS t
            GROUP BY t.queue
            ON CONFLICT (queue, minute, writer) DO UPDATE SET
                completed = n.completed + excluded.completed,
                retried = n.retried + excluded.retried,
                dead = n.dead + excluded.dead
        )
        SELECT
            coalesce((SELECT array_agg(c) FROM done), '{}')
                || coalesce((SELECT array_agg(c) FROM ended), '{}'),
            coalesce((SELECT array_agg(id) FROM done), '{}'),
            coalesce((SELECT array_agg(c) FROM done), '{}'),
            woken || coalesce((
                SELECT array_agg(DISTINCT queue) FROM ended WHERE available_at <= p_now), '{}')
        INTO settled, removed, removed_at, woken;

        -- 3. Statuses: a settlement that did not apply makes its commit STALE (even if it also
        --    conflicts); a conflicting commit whose lease is valid is CONFLICT.
        IF cardinality(settled) < cardinality(s_id) OR cardinality(conflicted) > 0 THEN
            SELECT coalesce(array_agg(f.c ORDER BY f.c), '{}'),
                   coalesce(array_agg(f.status ORDER BY f.c), '{}')
            INTO failed_commits, failed_statuses
            FROM (
                SELECT s.c,
                       CASE WHEN s.c = ANY (conflicted) AND EXISTS (
                                SELECT 1 FROM {schema}.jobs AS j
                                WHERE j.id = s.id AND j.token = s.token AND j.available_at >= p_now)
                            THEN 'conflict' ELSE 'stale' END AS status
                FROM unnest(s_commit, s_id, s_token) AS s(c, id, token)
                WHERE s.c <> ALL (settled)
                UNION ALL
                SELECT c, 'conflict' FROM unnest(conflicted) AS c WHERE c <> ALL (s_commit)
            ) AS f;
        END IF;
    ELSIF cardinality(conflicted) > 0 THEN
        failed_commits := conflicted;
        failed_statuses := array_fill('conflict'::text, ARRAY[cardinality(conflicted)]);
    END IF;
    failed := failed_commits;

    -- 4. State writes. The client folds repeated writes of a key within a commit into one row:
    --    the final value (or a delete), how many sets it stands for, and whether a delete came
    --    first (reset: the version restarts from 0).
    IF cardinality(w_key) > 0 THEN
        DELETE FROM {schema}.states AS s
        USING unnest(w_commit, w_key, w_delete, w_reset) AS w(c, key, is_delete, reset)
        WHERE (w.is_delete OR w.reset) AND w.c <> ALL (failed) AND s.key = w.key;
        INSERT INTO {schema}.states AS s (key, value, version)
        SELECT w.key, w.value, w.sets
        FROM unnest(w_commit, w_key, w_delete, w_value, w_sets) AS w(c, key, is_delete, value, sets)
        WHERE NOT w.is_delete AND w.c <> ALL (failed)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = s.version + excluded.version;
    END IF;

    -- 5. Cancels delete a pending (not leased) job by its idempotency key, and free the key.
    IF cardinality(x_key) > 0 THEN
        WITH hit AS (
            -- the first cancel that reaches a job deletes it (and frees the key it came by)
            SELECT DISTINCT ON (i.job_id) i.queue, i.key, i.job_id, x.c
            FROM unnest(x_commit, x_queue, x_key) AS x(c, queue, key)
            JOIN {schema}.idempotency AS i ON i.queue = x.queue AND i.key = x.key
            WHERE x.c <> ALL (failed)
              AND (i.expires_at IS NULL OR i.expires_at > p_now)
              -- a job a later commit of this batch settled was still leased when the cancel ran
              AND NOT EXISTS (
                  SELECT 1 FROM unnest(s_commit, s_id) AS s(c, id)
                  WHERE s.id = i.job_id AND s.c > x.c AND s.c = ANY (settled))
            ORDER BY i.job_id, x.c
        ), gone AS (
            DELETE FROM {schema}.jobs AS j USING hit
            WHERE j.id = hit.job_id AND j.token IS NULL
            RETURNING j.id, hit.c
        ), freed AS (
            DELETE FROM {schema}.idempotency AS i USING hit, gone
            WHERE gone.id = hit.job_id AND i.queue = hit.queue AND i.key = hit.key
        )
        SELECT removed || coalesce(array_agg(id), '{}'), removed_at || coalesce(array_agg(c), '{}')
        INTO removed, removed_at
        FROM gone;
    END IF;

    -- 6. New jobs, inserted in input order. A keyed job: the first job of a free idempotency key
    --    claims it, and only a job that claimed its key just now is inserted; every job with the
    --    key resolves to the key's holder. A job without a key is simply inserted (its id is its
    --    result, which the client knows). A job id that a later commit of this batch removes was
    --    still there at this point, so it is not inserted again.
    IF cardinality(j_id) > 0 THEN
        keyed := EXISTS (SELECT 1 FROM unnest(j_key) AS k WHERE k IS NOT NULL);
        IF keyed THEN
            WITH claimed AS (
                INSERT INTO {schema}.idempotency AS i (queue, key, job_id)
                SELECT DISTINCT ON (j.queue, j.key) j.queue, j.key, j.id
                FROM unnest(j_commit, j_id, j_queue, j_key) WITH ORDINALITY AS j(c, id, queue, key, n)
                WHERE j.key IS NOT NULL AND j.c <> ALL (failed)
                ORDER BY j.queue, j.key, j.n
                ON CONFLICT (queue, key) DO UPDATE SET job_id = excluded.job_id, expires_at = NULL
                    WHERE i.expires_at IS NOT NULL AND i.expires_at <= p_now
                RETURNING i.queue, i.key, i.job_id
            )
            SELECT coalesce(array_agg(queue), '{}'), coalesce(array_agg(key), '{}'),
                   coalesce(array_agg(job_id), '{}')
            INTO claimed_queue, claimed_key, claimed_id
            FROM claimed;
        END IF;

        INSERT INTO {schema}.jobs (
            id, queue, body, available_at, enqueued_at, idempotency_key, priority, lease_seconds
        )
        SELECT j.id, j.queue, j.body, j.available_at, j.enqueued_at, j.key, j.priority,
               j.lease_seconds
        FROM unnest(
            j_commit, j_id, j_queue, j_body, j_available_at, j_enqueued_at, j_key, j_priority,
            j_lease_seconds
        ) AS j(c, id, queue, body, available_at, enqueued_at, key, priority, lease_seconds)
        WHERE j.c <> ALL (failed)
          AND (j.key IS NULL OR EXISTS (
              SELECT 1 FROM unnest(claimed_queue, claimed_key, claimed_id) AS k(queue, key, id)
              WHERE k.queue = j.queue AND k.key = j.key AND k.id = j.id))
          AND (cardinality(removed) = 0 OR NOT EXISTS (
              SELECT 1 FROM unnest(removed, removed_at) AS r(id, c)
              WHERE r.id = j.id AND r.c > j.c))
        ON CONFLICT (id) DO NOTHING;

        -- (a plain expression: nearly every batch has only priority 0 and stops here)
        IF NOT 0 = ALL (j_priority) THEN
            INSERT INTO {schema}.queue_lanes (queue, priority)
            SELECT DISTINCT j.queue, j.priority
            FROM unnest(j_commit, j_queue, j_priority) AS j(c, queue, priority)
            WHERE j.priority <> 0 AND j.c <> ALL (failed)
            ON CONFLICT DO NOTHING;
        END IF;

        IF keyed THEN
            SELECT array_agg(CASE WHEN j.c = ANY (failed) THEN NULL ELSE i.job_id END ORDER BY j.n)
            INTO job_ids
            FROM unnest(j_commit, j_queue, j_key) WITH ORDINALITY AS j(c, queue, key, n)
            LEFT JOIN {schema}.idempotency AS i ON i.queue = j.queue AND i.key = j.key
            WHERE j.key IS NOT NULL;
        END IF;
    END IF;

    -- 7. Events fan out into every subscribed queue, one job per (event, queue) with a
    --    deterministic id so a re-delivered event collapses.
    IF cardinality(e_id) > 0 THEN
        WITH e AS MATERIALIZED (
            SELECT * FROM unnest(e_commit, e_id, e_event, e_body, e_emitted_at)
                WITH ORDINALITY AS e(c, id, event, body, emitted_at, n)
            WHERE e.c <> ALL (failed)
        ), routed AS MATERIALIZED (
            SELECT e.*, s.queue, e.id || ':' || s.queue AS job_id
            FROM e JOIN {schema}.subscriptions AS s ON s.event = e.event
        ), added AS (
            INSERT INTO {schema}.jobs AS t (id, queue, body, available_at, enqueued_at)
            SELECT r.job_id, r.queue, r.body, r.emitted_at, r.emitted_at
            FROM routed AS r
            WHERE NOT EXISTS (
                SELECT 1 FROM unnest(removed, removed_at) AS x(id, c)
                WHERE x.id = r.job_id AND x.c > r.c)
            ON CONFLICT (id) DO NOTHING
            RETURNING t.queue, t.available_at
        )
        SELECT coalesce((
                   SELECT array_agg(coalesce(routes.count, 0) ORDER BY n.n)
                   FROM generate_series(1, cardinality(e_id)) AS n(n)
                   LEFT JOIN (SELECT routed.n, count(*)::integer AS count
                              FROM routed GROUP BY routed.n) AS routes ON routes.n = n.n), '{}'),
               woken || coalesce((
                   SELECT array_agg(DISTINCT queue) FROM added WHERE available_at <= p_now), '{}')
        INTO deliveries, woken;
    END IF;

    -- 8. Workflow history, in input order (the order unnest yields, which seq records).
    IF cardinality(h_correlation_id) > 0 THEN
        INSERT INTO {schema}.history (correlation_id, at, kind, name, message_id, attempt, detail)
        SELECT h.correlation_id, h.at, h.kind, h.name, h.message_id, h.attempt, h.detail
        FROM unnest(
            h_commit, h_correlation_id, h_at, h_kind, h_name, h_message_id, h_attempt, h_detail
        ) AS h(c, correlation_id, at, kind, name, message_id, attempt, detail)
        WHERE h.c <> ALL (failed);
    END IF;

    -- 9. Wake idle workers of the queues that got work (delivered at COMMIT, like the rows).
    IF cardinality(woken) > 0 THEN
        woken := ARRAY(SELECT DISTINCT q FROM unnest(woken) AS q ORDER BY q);
        payload := array_to_string(woken, E'\n');
        IF octet_length(payload) > 7000 THEN
            payload := '*';
        END IF;
        PERFORM pg_notify(p_channel, payload);
    END IF;

    -- 10. Expired idempotency keys go a few at a time, whenever the client asks for it.
    IF p_purge > 0 THEN
        DELETE FROM {schema}.idempotency
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM {schema}.idempotency WHERE expires_at <= p_now LIMIT p_purge));
    END IF;
END
$$;
