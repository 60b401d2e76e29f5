-- Webhook deliveries: one row per (webhook, notification intent), written
-- in the same transaction as the change that raised the intent
-- (Store::commit). Each webhook's rows are delivered strictly in `seq`
-- order; a delivered row keeps its place (the delivery log) until pruned.
CREATE TABLE webhook_deliveries (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT    NOT NULL UNIQUE, -- X-Berth-Delivery
    webhook            TEXT    NOT NULL,
    notification_id    TEXT    NOT NULL,
    notification_type  TEXT    NOT NULL,
    body               TEXT    NOT NULL, -- the exact JSON POSTed and signed
    created_at_ms      INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    last_attempt_at_ms INTEGER,
    delivered_at_ms    INTEGER -- NULL while pending
);
-- The key of a webhook's queue: (webhook, seq).
CREATE UNIQUE INDEX webhook_deliveries_webhook_seq ON webhook_deliveries (webhook, seq);
-- The head of a webhook's queue: its oldest pending row.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook, seq)
    WHERE delivered_at_ms IS NULL;
