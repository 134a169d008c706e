-- The dashboard's job list, newest first, walked by keyset (created_at, id):
-- unfiltered, by state, by account and by provider. Each filter has an
-- index that yields its rows already in page order, so a page reads only
-- its own rows, however many jobs the store holds.
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_state_created ON jobs (state, created_at, id);
CREATE INDEX jobs_account_created ON jobs (account, created_at, id);
CREATE INDEX jobs_provider_created ON jobs (provider, created_at, id);
