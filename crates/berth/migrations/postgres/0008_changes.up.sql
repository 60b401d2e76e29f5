-- The change log behind GET /v1/stream: one row per thing a write changed
-- (runtime record, operation, health event, notification, pin, template,
-- rollout, plugin, plugin update), written in the same transaction as the
-- change it describes. Writers take one transaction-scoped advisory lock
-- just before inserting their rows (see adapters/store/postgres.rs), so
-- `seq` order is commit order: a reader that saw seq N never later finds a
-- committed row below N. Pruned to the newest rows by the feed.
CREATE TABLE changes (
    seq        BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    runtime_id TEXT
);
