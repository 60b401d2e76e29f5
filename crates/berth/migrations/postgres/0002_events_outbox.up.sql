-- Health events, notification intents, stream job results and the
-- transactional outbox: all written in the same transaction as the change
-- they report (Store::commit). `seq` is the order of writing.
-- Ids use the "C" collation, as in 0001.

CREATE TABLE health_events (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT   NOT NULL UNIQUE,
    runtime_id   TEXT COLLATE "C" NOT NULL,
    event_type   TEXT   NOT NULL,
    container_id TEXT,
    at_ms        BIGINT NOT NULL,
    details      TEXT   NOT NULL -- JSON object of strings
);
CREATE INDEX health_events_runtime_seq ON health_events (runtime_id, seq);
CREATE INDEX health_events_type_seq ON health_events (event_type, seq);
CREATE INDEX health_events_runtime_container_type
    ON health_events (runtime_id, container_id, event_type);

CREATE TABLE notifications (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT   NOT NULL UNIQUE,
    notification_type TEXT   NOT NULL,
    audience          TEXT   NOT NULL,
    payload           TEXT   NOT NULL, -- JSON object of strings
    created_at_ms     BIGINT NOT NULL
);

-- One row per stream job id: a redelivered job gets the same answer.
CREATE TABLE job_results (
    job_id          TEXT    NOT NULL PRIMARY KEY,
    runtime_id      TEXT COLLATE "C" NOT NULL,
    kind            TEXT    NOT NULL,
    success         BOOLEAN NOT NULL,
    container_id    TEXT,
    engine_endpoint TEXT,
    error_code      TEXT,
    error_message   TEXT,
    finished_at_ms  BIGINT  NOT NULL
);

-- Messages to publish, oldest first; the relay deletes them once published.
-- Writers of one partition_key serialise on an advisory lock (see
-- adapters/store/postgres.rs), so seq order is commit order within a key.
CREATE TABLE outbox (
    seq           BIGSERIAL PRIMARY KEY,
    stream        TEXT   NOT NULL,
    partition_key TEXT   NOT NULL, -- runtime id, '' when none
    fields        TEXT   NOT NULL, -- JSON array of [name, value] pairs
    created_at_ms BIGINT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT
);
