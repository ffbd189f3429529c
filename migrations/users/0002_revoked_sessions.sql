-- Sessions (refresh-token families) whose access tokens every service refuses: the
-- durable record behind each process's in-memory copy (common::revocations). A row lives
-- until the last access token of its session has expired (`until`), then is pruned.
CREATE TABLE revoked_sessions (
    session_id UUID PRIMARY KEY,
    until      TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_sessions_until_idx ON revoked_sessions (until);
