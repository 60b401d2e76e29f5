-- The registry watcher's bookkeeping and rollouts.
-- `rollouts.seq` is the order of first saving (an update keeps it).

-- The last digest the watcher saw, per template.
CREATE TABLE image_observations (
    template       TEXT    NOT NULL PRIMARY KEY,
    reference      TEXT    NOT NULL, -- repo:tag
    digest         TEXT    NOT NULL,
    observed_at_ms INTEGER NOT NULL
);

-- Digests the watcher must not offer again for a template.
CREATE TABLE rejected_digests (
    template       TEXT    NOT NULL,
    digest         TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    rejected_at_ms INTEGER NOT NULL,
    PRIMARY KEY (template, digest)
);

CREATE TABLE rollouts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    template      TEXT    NOT NULL,
    from_digest   TEXT,
    to_digest     TEXT    NOT NULL,
    state         TEXT    NOT NULL, -- running, paused, halted, completed, aborted
    batch_size    INTEGER NOT NULL,
    max_failures  INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    revert_pin    INTEGER NOT NULL CHECK (revert_pin IN (0, 1)),
    source        TEXT    NOT NULL,
    message       TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX rollouts_template_seq ON rollouts (template, seq);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_targets (
    rollout_id    TEXT    NOT NULL,
    runtime_id    TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    state         TEXT    NOT NULL, -- pending, updated, failed, skipped
    error         TEXT,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, runtime_id)
);
