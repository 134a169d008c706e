-- Jobs by state and provider, kept up to date by triggers, so that
-- `/metrics` and `docfetch jobs` read a handful of rows instead of counting
-- (and sorting) every job in the store: a million finished jobs would cost
-- seconds and tens of megabytes per scrape. The triggers run inside the
-- transaction that changes the job, so the counts are always exact.
CREATE TABLE job_counts (
    state    TEXT NOT NULL,
    provider TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (state, provider)
) STRICT, WITHOUT ROWID;

INSERT INTO job_counts (state, provider, n)
    SELECT state, provider, COUNT(*) FROM jobs GROUP BY state, provider;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT OR IGNORE INTO job_counts (state, provider, n) VALUES (NEW.state, NEW.provider, 0);
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state AND provider = NEW.provider;
END;

CREATE TRIGGER job_counts_update AFTER UPDATE OF state, provider ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.provider IS NOT NEW.provider
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND provider = OLD.provider;
    INSERT OR IGNORE INTO job_counts (state, provider, n) VALUES (NEW.state, NEW.provider, 0);
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state AND provider = NEW.provider;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND provider = OLD.provider;
END;
