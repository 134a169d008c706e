-- Completion hooks: what to run when a job finishes, and whether it has run.
ALTER TABLE jobs ADD COLUMN hooks JSON;                   -- on_done, on_failed, on_done_url (from the request)
ALTER TABLE jobs ADD COLUMN hooks_state TEXT;             -- NULL (none), 'pending', 'done', 'failed'
ALTER TABLE jobs ADD COLUMN hooks_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN hooks_next_at BIGINT;
CREATE INDEX jobs_hooks_due ON jobs (hooks_next_at) WHERE hooks_state = 'pending';

-- Retention prunes finished jobs by age.
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;

-- The last time each schedule fired (its scheduled time, not the time it ran).
CREATE TABLE schedule_runs (
    schedule     TEXT PRIMARY KEY,
    last_fire_at BIGINT NOT NULL
);
