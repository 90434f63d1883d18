-- conveyor's PostgreSQL schema, version 1. Every name lives in the schema {schema}.
--
-- Times are double precision seconds from the caller's clock (the runtime's injectable clock), so
-- one clock drives leases and delays on every backend; the server's clock is never consulted.

CREATE SEQUENCE {schema}.lease_tokens;

-- The hot table: only jobs that still have to run (finished ones are deleted), so it stays small.
-- token is NULL while the job is not leased; a lease sets it from lease_tokens (it only grows).
CREATE TABLE {schema}.jobs (
    id              text PRIMARY KEY,
    queue           text NOT NULL,
    available_at    double precision NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    token           bigint,
    enqueued_at     double precision NOT NULL,
    idempotency_key text,
    last_error      text,
    body            bytea NOT NULL
) WITH (
    -- Every job row is inserted, updated and deleted within seconds: vacuum early so dead tuples
    -- do not pile up in front of the (queue, available_at) index scans of lease().
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
CREATE INDEX jobs_queue_available_at ON {schema}.jobs (queue, available_at);

-- (queue, key) -> job. expires_at is NULL while the job exists; after its ack or dead-lettering the
-- key is kept until expires_at (now + idempotency_retention) so a late duplicate still collapses.
CREATE TABLE {schema}.idempotency (
    queue      text NOT NULL,
    key        text NOT NULL,
    job_id     text NOT NULL,
    expires_at double precision,
    PRIMARY KEY (queue, key)
);
CREATE INDEX idempotency_expires_at ON {schema}.idempotency (expires_at)
    WHERE expires_at IS NOT NULL;

CREATE TABLE {schema}.subscriptions (
    event text NOT NULL,
    queue text NOT NULL,
    PRIMARY KEY (event, queue)
);

CREATE TABLE {schema}.states (
    key     text PRIMARY KEY,
    value   bytea NOT NULL,
    version bigint NOT NULL
);

CREATE TABLE {schema}.dead_letters (
    id              text PRIMARY KEY,
    queue           text NOT NULL,
    error_type      text NOT NULL,
    error_message   text NOT NULL,
    error_traceback text,
    attempts        integer NOT NULL,
    enqueued_at     double precision NOT NULL,
    failed_at       double precision NOT NULL,
    body            bytea NOT NULL
);
CREATE INDEX dead_letters_queue_failed_at ON {schema}.dead_letters (queue, failed_at, id);

-- Append-only; seq keeps the write order of one workflow instance.
CREATE TABLE {schema}.history (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id text NOT NULL,
    at             double precision NOT NULL,
    kind           text NOT NULL,
    name           text NOT NULL,
    message_id     text,
    attempt        integer,
    detail         text
);
CREATE INDEX history_correlation_id ON {schema}.history (correlation_id, seq);
-- at grows with seq (roughly): a BRIN index finds old entries for pruning at almost no write cost.
CREATE INDEX history_at ON {schema}.history USING brin (at);

-- lease: lease up to p_limit of the oldest available jobs of the given queues (one statement).
--
-- Each queue's index range is read in order, skipping rows other workers hold, then the oldest
-- p_limit of those are leased. The UPDATE finds its rows by physical address (ctid, stable while
-- this statement holds their lock): joined by id, the planner would hash a scan of the whole table.
--
-- The plan must be the ordered index scan whatever the table statistics say: a queue that filled
-- up since the last ANALYZE looks empty to the planner, which then prefers sorting the whole
-- backlog. Hence the SET clauses (they also keep commit_batch on its indexes).
CREATE FUNCTION {schema}.lease(
    p_queues text[], p_seconds double precision[], p_now double precision, p_limit integer
) RETURNS TABLE (
    id text, queue text, body bytea, attempts integer, token bigint,
    lease_deadline double precision, enqueued_at double precision, was_available_at double precision
) LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH wanted AS (
        SELECT * FROM unnest(p_queues, p_seconds) AS q(name, seconds)
    ), picked AS MATERIALIZED (
        SELECT candidate.row_id, candidate.available_at, wanted.seconds
        FROM wanted CROSS JOIN LATERAL (
            SELECT j.ctid AS row_id, j.available_at
            FROM {schema}.jobs AS j
            WHERE j.queue = wanted.name AND j.available_at <= p_now
            ORDER BY j.available_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) AS candidate
        ORDER BY candidate.available_at
        LIMIT p_limit
    ), leased AS (
        UPDATE {schema}.jobs AS j
        SET attempts = j.attempts + 1,
            token = nextval('{schema}.lease_tokens'),
            available_at = p_now + picked.seconds
        FROM picked
        WHERE j.ctid = picked.row_id
        RETURNING j.id, j.queue, j.body, j.attempts, j.token, j.available_at, j.enqueued_at,
                  picked.available_at AS was_available_at
    )
    SELECT * FROM leased ORDER BY leased.was_available_at;
END
$$;

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
            RETURNING s.c, j.queue, j.available_at
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

        INSERT INTO {schema}.jobs (id, queue, body, available_at, enqueued_at, idempotency_key)
        SELECT j.id, j.queue, j.body, j.available_at, j.enqueued_at, j.key
        FROM unnest(j_commit, j_id, j_queue, j_body, j_available_at, j_enqueued_at, j_key)
            AS j(c, id, queue, body, available_at, enqueued_at, key)
        WHERE j.c <> ALL (failed)
          AND (j.key IS NULL OR EXISTS (
              SELECT 1 FROM unnest(claimed_queue, claimed_key, claimed_id) AS k(queue, key, id)
              WHERE k.queue = j.queue AND k.key = j.key AND k.id = j.id))
          AND (cardinality(removed) = 0 OR NOT EXISTS (
              SELECT 1 FROM unnest(removed, removed_at) AS r(id, c)
              WHERE r.id = j.id AND r.c > j.c))
        ON CONFLICT (id) DO NOTHING;

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
