-- Jobs and their history, as in migrations/sqlite/0001_jobs.sql.
-- Timestamps are Unix milliseconds (UTC) in BIGINT, exactly as the code
-- handles them. Counters are BIGINT too, so every integer column reads back
-- as i64 like SQLite's INTEGER.
-- JSON columns use `json`, not `jsonb`: `json` keeps the text it was given,
-- so `cursor`, `params`, `result` and `hooks` read back byte for byte (jsonb
-- would reformat numbers and refuse "\u0000" in strings), while PostgreSQL
-- still refuses anything that is not JSON.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    account         TEXT NOT NULL,
    provider        TEXT NOT NULL,
    operation       TEXT NOT NULL,
    params          JSON NOT NULL,             -- as requested
    state           TEXT NOT NULL CHECK (state IN ('queued','running','waiting','done','failed','cancelled')),
    cursor          JSON NOT NULL DEFAULT '{}', -- the provider's progress
    attempts        BIGINT NOT NULL DEFAULT 0,  -- consecutive transient errors
    polls           BIGINT NOT NULL DEFAULT 0,  -- "not ready yet" answers
    steps           BIGINT NOT NULL DEFAULT 0,  -- provider steps started
    next_run_at     BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    result          JSON,                       -- files and warnings
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    deadline_at     BIGINT NOT NULL,
    source          TEXT NOT NULL,
    request_sha256  TEXT NOT NULL
);

-- Due work, in due order: the claim query walks this index, stops after
-- LIMIT rows and never sorts; only live jobs are in it, so it stays small
-- however many finished jobs the table keeps.
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state IN ('queued', 'waiting');
-- Leases to take back when they expire.
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs (state, created_at);

CREATE TABLE job_events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
