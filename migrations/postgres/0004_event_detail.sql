-- Why a job's next run is when it is, on the history events that set it:
-- JSON {"next_run_at", "why", "wait_ms", "hint_ms", "step"} (see
-- src/job/next_run.rs); NULL on events that set no run time. Text, like
-- every JSON column here, so both stores read it the same way.
ALTER TABLE job_events ADD COLUMN detail TEXT;
