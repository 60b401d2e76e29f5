-- Health events, notification intents, stream job results and the
-- transactional outbox: all written in the same transaction as the change
-- they report (Store::commit). `seq` is the order of writing.

CREATE TABLE health_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    runtime_id   TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    container_id TEXT,
    at_ms        INTEGER NOT NULL,
    details      TEXT    NOT NULL -- JSON object of strings
);
CREATE INDEX health_events_runtime_seq ON health_events (runtime_id, seq);
CREATE INDEX health_events_type_seq ON health_events (event_type, seq);
CREATE INDEX health_events_runtime_container_type
    ON health_events (runtime_id, container_id, event_type);

CREATE TABLE notifications (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    notification_type TEXT    NOT NULL,
    audience          TEXT    NOT NULL,
    payload           TEXT    NOT NULL, -- JSON object of strings
    created_at_ms     INTEGER NOT NULL
);

-- One row per stream job id: a redelivered job gets the same answer.
CREATE TABLE job_results (
    job_id          TEXT    NOT NULL PRIMARY KEY,
    runtime_id      TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    success         INTEGER NOT NULL CHECK (success IN (0, 1)),
    container_id    TEXT,
    engine_endpoint TEXT,
    error_code      TEXT,
    error_message   TEXT,
    finished_at_ms  INTEGER NOT NULL
);

-- Messages to publish, oldest first; the relay deletes them once published.
CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    stream        TEXT    NOT NULL,
    partition_key TEXT    NOT NULL, -- runtime id, '' when none
    fields        TEXT    NOT NULL, -- JSON array of [name, value] pairs
    created_at_ms INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
