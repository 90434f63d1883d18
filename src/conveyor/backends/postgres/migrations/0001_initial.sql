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
