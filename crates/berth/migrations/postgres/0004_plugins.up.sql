-- Plugins installed into runtimes at a tracked ref, and the queue of
-- updates the drift sweeper found. `seq` is the order of first writing.
-- Names and ids use the "C" collation, as in 0001.

CREATE TABLE plugins (
    runtime_id      TEXT COLLATE "C" NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    source          TEXT   NOT NULL,
    track           TEXT   NOT NULL,
    installed_sha   TEXT,
    installed_at_ms BIGINT,
    resolved_at_ms  BIGINT,
    error_code      TEXT,
    error_message   TEXT,
    PRIMARY KEY (runtime_id, name)
);

CREATE TABLE plugin_updates (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT COLLATE "C" NOT NULL UNIQUE,
    runtime_id    TEXT COLLATE "C" NOT NULL,
    plugin        TEXT COLLATE "C" NOT NULL,
    track         TEXT   NOT NULL,
    from_sha      TEXT,
    to_sha        TEXT   NOT NULL,
    status        TEXT   NOT NULL, -- pending, applied, dismissed
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- At most one pending update per (runtime, plugin): concurrent sweeps
-- cannot queue two.
CREATE UNIQUE INDEX plugin_updates_one_pending
    ON plugin_updates (runtime_id, plugin) WHERE status = 'pending';
CREATE INDEX plugin_updates_runtime ON plugin_updates (runtime_id, plugin);
