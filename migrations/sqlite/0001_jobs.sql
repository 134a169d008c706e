-- Jobs and their history. Timestamps are Unix milliseconds (UTC).
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL UNIQUE,
    account         TEXT NOT NULL,
    provider        TEXT NOT NULL,
    operation       TEXT NOT NULL,
    params          TEXT NOT NULL,            -- JSON, as requested
    state           TEXT NOT NULL CHECK (state IN ('queued','running','waiting','done','failed','cancelled')),
    cursor          TEXT NOT NULL DEFAULT '{}', -- JSON, the provider's progress
    attempts        INTEGER NOT NULL DEFAULT 0, -- consecutive transient errors
    polls           INTEGER NOT NULL DEFAULT 0, -- "not ready yet" answers
    steps           INTEGER NOT NULL DEFAULT 0, -- provider steps started
    next_run_at     INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    result          TEXT,                     -- JSON: files and warnings
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    deadline_at     INTEGER NOT NULL,
    source          TEXT NOT NULL,
    request_sha256  TEXT NOT NULL
) STRICT;

-- Due work, in due order: the claim query walks this index and never sorts.
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state IN ('queued', 'waiting');
-- Leases to take back when they expire.
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs (state, created_at);

CREATE TABLE job_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
) STRICT;
CREATE INDEX job_events_job ON job_events (job_id, seq);
