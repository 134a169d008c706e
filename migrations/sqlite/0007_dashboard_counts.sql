-- The dashboard's overview and accounts page on a store of millions of
-- jobs: counts by account as well as by state and provider, and jobs
-- finished per hour, kept by triggers in the transaction that changes the
-- job (so they are exact) instead of counting the jobs table per view.
--
-- `job_counts` gains the account. `job_finished_hours` counts the jobs now
-- done or failed by the hour they finished in, as counting the jobs table
-- would (and as PostgreSQL does): a retried job leaves its hour, a pruned
-- one too. Only the last two days are kept; the chart shows one.

DROP TRIGGER job_counts_insert;
DROP TRIGGER job_counts_update;
DROP TRIGGER job_counts_delete;
DROP TABLE job_counts;

CREATE TABLE job_counts (
    state    TEXT NOT NULL,
    provider TEXT NOT NULL,
    account  TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (state, provider, account)
) STRICT, WITHOUT ROWID;

INSERT INTO job_counts (state, provider, account, n)
    SELECT state, provider, account, COUNT(*) FROM jobs GROUP BY state, provider, account;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (state, provider, account, n)
        VALUES (NEW.state, NEW.provider, NEW.account, 1)
        ON CONFLICT (state, provider, account) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_update AFTER UPDATE OF state, provider, account ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.provider IS NOT NEW.provider OR OLD.account IS NOT NEW.account
BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE state = OLD.state AND provider = OLD.provider AND account = OLD.account;
    INSERT INTO job_counts (state, provider, account, n)
        VALUES (NEW.state, NEW.provider, NEW.account, 1)
        ON CONFLICT (state, provider, account) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE state = OLD.state AND provider = OLD.provider AND account = OLD.account;
END;

CREATE TABLE job_finished_hours (
    hour  INTEGER NOT NULL,  -- finished_at / 3600000
    state TEXT NOT NULL,     -- done or failed
    n     INTEGER NOT NULL,
    PRIMARY KEY (hour, state)
) STRICT, WITHOUT ROWID;

INSERT INTO job_finished_hours (hour, state, n)
    SELECT finished_at / 3600000, state, COUNT(*) FROM jobs
     WHERE state IN ('done', 'failed')
       AND finished_at >= (CAST(strftime('%s', 'now') AS INTEGER) - 172800) * 1000
     GROUP BY finished_at / 3600000, state;

CREATE TRIGGER job_finished_hours_update AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state AND NEW.finished_at IS NOT NULL
BEGIN
    INSERT INTO job_finished_hours (hour, state, n)
        VALUES (NEW.finished_at / 3600000, NEW.state, 1)
        ON CONFLICT (hour, state) DO UPDATE SET n = n + 1;
    DELETE FROM job_finished_hours WHERE hour < NEW.finished_at / 3600000 - 48;
END;

CREATE TRIGGER job_finished_hours_leave AFTER UPDATE OF state ON jobs
WHEN OLD.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state AND OLD.finished_at IS NOT NULL
BEGIN
    UPDATE job_finished_hours SET n = n - 1
        WHERE hour = OLD.finished_at / 3600000 AND state = OLD.state;
END;

CREATE TRIGGER job_finished_hours_delete AFTER DELETE ON jobs
WHEN OLD.state IN ('done', 'failed') AND OLD.finished_at IS NOT NULL
BEGIN
    UPDATE job_finished_hours SET n = n - 1
        WHERE hour = OLD.finished_at / 3600000 AND state = OLD.state;
END;

CREATE TRIGGER job_finished_hours_insert AFTER INSERT ON jobs
WHEN NEW.state IN ('done', 'failed') AND NEW.finished_at IS NOT NULL
BEGIN
    INSERT INTO job_finished_hours (hour, state, n)
        VALUES (NEW.finished_at / 3600000, NEW.state, 1)
        ON CONFLICT (hour, state) DO UPDATE SET n = n + 1;
END;
