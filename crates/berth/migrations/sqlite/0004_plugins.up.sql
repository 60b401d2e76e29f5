-- Plugins installed into runtimes at a tracked ref, and the queue of
-- updates the drift sweeper found. `seq` is the order of first writing.

CREATE TABLE plugins (
    runtime_id      TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    source          TEXT    NOT NULL, -- git+https://…, git+ssh://…, git+file://…
    track           TEXT    NOT NULL, -- none, tag:…, tag:latest, branch:…, sha:…
    installed_sha   TEXT,
    installed_at_ms INTEGER,
    resolved_at_ms  INTEGER,
    error_code      TEXT,
    error_message   TEXT,
    PRIMARY KEY (runtime_id, name)
);

CREATE TABLE plugin_updates (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    runtime_id    TEXT    NOT NULL,
    plugin        TEXT    NOT NULL,
    track         TEXT    NOT NULL,
    from_sha      TEXT,
    to_sha        TEXT    NOT NULL,
    status        TEXT    NOT NULL, -- pending, applied, dismissed
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
-- At most one pending update per (runtime, plugin): concurrent sweeps
-- cannot queue two.
CREATE UNIQUE INDEX plugin_updates_one_pending
    ON plugin_updates (runtime_id, plugin) WHERE status = 'pending';
CREATE INDEX plugin_updates_runtime ON plugin_updates (runtime_id, plugin);
