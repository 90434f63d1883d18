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
