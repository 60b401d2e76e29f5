-- The outbox relay's identity: one row. The relay keeps its high-water
-- mark in Redis under a key that names this id
-- (`berth:<owner>:outbox:<id>:high_water`), so a new database, whose
-- outbox seqs start again at 1, never meets the mark of another one. A
-- database found behind its mark (restored from a backup) gets a new id.
CREATE TABLE outbox_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT    NOT NULL
);
INSERT INTO outbox_identity (singleton, id) VALUES (1, lower(hex(randomblob(16))));
-- One delivery per (webhook, notification intent): a change replayed can
-- never queue a second POST of the same intent.
CREATE UNIQUE INDEX webhook_deliveries_webhook_notification
    ON webhook_deliveries (webhook, notification_id);
