-- Webhook deliveries: one row per (webhook, notification intent), written
-- in the same transaction as the change that raised the intent
-- (Store::commit). Each webhook's rows are delivered strictly in `seq`
-- order; a delivered row keeps its place (the delivery log) until pruned.
-- Writers of one webhook serialise on the outbox partition advisory lock
-- (key `webhook:<name>`, see adapters/store/postgres.rs), so seq order is
-- commit order within a webhook.
CREATE TABLE webhook_deliveries (
    seq                BIGSERIAL PRIMARY KEY,
    id                 TEXT   NOT NULL UNIQUE, -- X-Berth-Delivery
    webhook            TEXT COLLATE "C" NOT NULL,
    notification_id    TEXT   NOT NULL,
    notification_type  TEXT   NOT NULL,
    body               TEXT   NOT NULL, -- the exact JSON POSTed and signed
    created_at_ms      BIGINT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    last_attempt_at_ms BIGINT,
    delivered_at_ms    BIGINT -- NULL while pending
);
-- The key of a webhook's queue: (webhook, seq).
CREATE UNIQUE INDEX webhook_deliveries_webhook_seq ON webhook_deliveries (webhook, seq);
-- The head of a webhook's queue: its oldest pending row.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook, seq)
    WHERE delivered_at_ms IS NULL;
