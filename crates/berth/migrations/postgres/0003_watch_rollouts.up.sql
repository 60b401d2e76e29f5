-- The registry watcher's bookkeeping and rollouts.
-- `rollouts.seq` is the order of first saving (an update keeps it).
-- Names and ids use the "C" collation, as in 0001.

-- The last digest the watcher saw, per template.
CREATE TABLE image_observations (
    template       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    reference      TEXT   NOT NULL, -- repo:tag
    digest         TEXT   NOT NULL,
    observed_at_ms BIGINT NOT NULL
);

-- Digests the watcher must not offer again for a template.
CREATE TABLE rejected_digests (
    template       TEXT COLLATE "C" NOT NULL,
    digest         TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    rejected_at_ms BIGINT NOT NULL,
    PRIMARY KEY (template, digest)
);

CREATE TABLE rollouts (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT COLLATE "C" NOT NULL UNIQUE,
    template      TEXT COLLATE "C" NOT NULL,
    from_digest   TEXT,
    to_digest     TEXT    NOT NULL,
    state         TEXT    NOT NULL, -- running, paused, halted, completed, aborted
    batch_size    BIGINT  NOT NULL,
    max_failures  BIGINT  NOT NULL,
    failures      BIGINT  NOT NULL,
    revert_pin    BOOLEAN NOT NULL,
    source        TEXT    NOT NULL,
    message       TEXT,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);
CREATE INDEX rollouts_template_seq ON rollouts (template, seq);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_targets (
    rollout_id    TEXT COLLATE "C" NOT NULL,
    runtime_id    TEXT COLLATE "C" NOT NULL,
    position      BIGINT NOT NULL,
    state         TEXT   NOT NULL, -- pending, updated, failed, skipped
    error         TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, runtime_id)
);
