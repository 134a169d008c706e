-- Job counts by account, provider and state for /metrics and the
-- dashboard on a store of millions of jobs, without counting the jobs
-- table per view (SQLite keeps them with row triggers, migration 0007
-- there).
--
-- One counter row per group, updated by every daemon's transactions, would
-- make the fleet wait on it. So each statement that changes jobs appends
-- its net change per group to `job_count_deltas` (a statement trigger over
-- the statement's transition tables: one row per touched group, whatever
-- the number of jobs), and housekeeping folds the deltas into `job_counts`
-- (`Store::fold_counts`). A reader adds both tables up in one statement,
-- so a count is exact as of that statement's snapshot.
CREATE TABLE job_counts (
    account  TEXT NOT NULL,
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (account, provider, state)
);

CREATE TABLE job_count_deltas (
    account  TEXT NOT NULL,
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL
);

CREATE FUNCTION docfetch_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (account, provider, state, n)
    SELECT account, provider, state, COUNT(*) FROM inserted
     GROUP BY account, provider, state;
    RETURN NULL;
END $$;

CREATE FUNCTION docfetch_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (account, provider, state, n)
    SELECT account, provider, state, -COUNT(*) FROM deleted
     GROUP BY account, provider, state;
    RETURN NULL;
END $$;

-- Most updates (leases, checkpoints) move no job between groups; only the
-- ones that do leave a delta.
CREATE FUNCTION docfetch_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (account, provider, state, n)
    SELECT account, provider, state, SUM(d) FROM (
        SELECT b.account, b.provider, b.state, -1 AS d
          FROM before_rows b JOIN after_rows a ON a.id = b.id
         WHERE (a.state, a.account, a.provider) IS DISTINCT FROM (b.state, b.account, b.provider)
        UNION ALL
        SELECT a.account, a.provider, a.state, 1
          FROM before_rows b JOIN after_rows a ON a.id = b.id
         WHERE (a.state, a.account, a.provider) IS DISTINCT FROM (b.state, b.account, b.provider)
    ) AS moved
    GROUP BY account, provider, state
    HAVING SUM(d) <> 0;
    RETURN NULL;
END $$;

-- Writers wait until the counts are seeded and the triggers in place
-- (daemons of the previous version may be running during the upgrade).
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER job_counts_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION docfetch_count_inserted();
CREATE TRIGGER job_counts_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docfetch_count_updated();
CREATE TRIGGER job_counts_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION docfetch_count_deleted();

INSERT INTO job_counts (account, provider, state, n)
SELECT account, provider, state, COUNT(*) FROM jobs GROUP BY account, provider, state;
