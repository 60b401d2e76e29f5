-- The change log behind GET /v1/stream: one row per thing a write changed
-- (runtime record, operation, health event, notification, pin, template,
-- rollout, plugin, plugin update), written in the same transaction as the
-- change it describes. `BEGIN IMMEDIATE` makes every writer take turns, so
-- `seq` order is commit order. Pruned to the newest rows by the feed.
CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    runtime_id TEXT
);
