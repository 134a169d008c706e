-- The job a schedule's last firing made, for the dashboard's schedules
-- page. `last_fire_at` says up to when occurrences were considered (a new
-- schedule starts there without firing); these say which job the latest
-- occurrence that was fired became, and its scheduled time.
ALTER TABLE schedule_runs ADD COLUMN last_job TEXT;
ALTER TABLE schedule_runs ADD COLUMN last_job_at INTEGER;
