-- Account-wide limits shared by every daemon on this database (SQLite has
-- one daemon per store, which keeps them in memory).

-- A step of an account's job holds a slot while it runs. A slot counts only
-- while its job is still running under a live lease of the slot's owner, so
-- a daemon that dies frees its slots when its leases expire, with no one
-- having to clean up after it.
CREATE TABLE account_slots (
    account TEXT NOT NULL,
    job_id  TEXT NOT NULL,
    owner   TEXT NOT NULL,
    PRIMARY KEY (account, job_id)
);

-- A 429 pauses the account for every daemon until `until_ms`.
CREATE TABLE account_cooldowns (
    account  TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);

-- Takes a slot of `p_account` for the job in one round trip. Returns 0 when
-- the slot is taken, -1 when all `p_limit` slots are held, and the end of
-- the account's pause (Unix ms) when it is cooling down after a 429. The
-- advisory lock (per account, held to the end of the transaction) makes the
-- count and the insert one atomic decision across daemons.
CREATE FUNCTION docfetch_take_account_slot(p_account TEXT, p_job TEXT, p_owner TEXT,
                                           p_limit INTEGER, p_now BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    cooling BIGINT;
    held    INTEGER;
BEGIN
    SELECT until_ms INTO cooling FROM account_cooldowns
     WHERE account = p_account AND until_ms > p_now;
    IF FOUND THEN
        RETURN cooling;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('docfetch account ' || p_account, 0));
    DELETE FROM account_slots s
     WHERE s.account = p_account
       AND NOT EXISTS (SELECT 1 FROM jobs j
                        WHERE j.id = s.job_id AND j.state = 'running'
                          AND j.lease_owner = s.owner AND j.lease_until >= p_now);
    SELECT COUNT(*) INTO held FROM account_slots
     WHERE account = p_account AND job_id <> p_job;
    IF held >= p_limit THEN
        RETURN -1;
    END IF;
    INSERT INTO account_slots (account, job_id, owner) VALUES (p_account, p_job, p_owner)
        ON CONFLICT (account, job_id) DO UPDATE SET owner = EXCLUDED.owner;
    RETURN 0;
END $$;
