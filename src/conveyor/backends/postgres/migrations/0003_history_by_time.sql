-- conveyor's PostgreSQL schema, version 3: workflow listings keyset-paged by start time (issue 17).
-- The BRIN index on history.at served pruning only; a B-tree serves pruning and the newest-first
-- walk of `instances`, which pages a million instances in milliseconds. Entries are appended in
-- time order, so its inserts go to the rightmost leaf.
DROP INDEX {schema}.history_at;
CREATE INDEX history_by_at ON {schema}.history (at);
