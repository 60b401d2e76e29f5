-- berth's first schema. Timestamps are integer milliseconds since the epoch,
-- ids are text. No foreign key between runtimes and templates: the
-- reconciler may adopt a runtime whose template no longer exists.

CREATE TABLE templates (
    name          TEXT    NOT NULL PRIMARY KEY,
    doc           TEXT    NOT NULL, -- JSON of TemplateDoc::from_template
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE pins (
    template       TEXT    NOT NULL PRIMARY KEY,
    digest         TEXT    NOT NULL,
    promoted_at_ms INTEGER NOT NULL,
    promoted_by    TEXT    NOT NULL,
    reason         TEXT
);

CREATE TABLE pin_history (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    template        TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    digest          TEXT,
    previous_digest TEXT,
    at_ms           INTEGER NOT NULL,
    by_who          TEXT    NOT NULL,
    reason          TEXT
);
CREATE INDEX pin_history_template_seq ON pin_history (template, seq);

CREATE TABLE runtimes (
    id                 TEXT    NOT NULL PRIMARY KEY,
    template           TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    container_id       TEXT,
    image_ref          TEXT,
    image_digest       TEXT,
    engine_endpoint    TEXT,
    generation         INTEGER NOT NULL,
    env                TEXT    NOT NULL, -- JSON object of strings
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    last_error_code    TEXT,
    last_error_message TEXT
);
CREATE INDEX runtimes_template ON runtimes (template);
CREATE INDEX runtimes_status ON runtimes (status);

CREATE TABLE operations (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    runtime_id     TEXT,
    template       TEXT,
    kind           TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    details        TEXT    NOT NULL -- JSON object of strings
);
CREATE INDEX operations_runtime_seq ON operations (runtime_id, seq);
CREATE INDEX operations_kind_seq ON operations (kind, seq);
CREATE INDEX operations_outcome ON operations (outcome);
