-- An Idempotency-Key's record is taken before the work it answers for, as a lease, and
-- completed by the work's own transaction (common::idempotency): one row that says a
-- request with the key is running (`claim`, `running_until`), what that request recorded
-- for a retry to resume it (`progress`: an order's id, a payment's), and, once done, the
-- answer to replay (`status`, `body`).
ALTER TABLE idempotency_keys
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    -- The request (or job) holding the key: only its completion counts.
    ADD COLUMN claim UUID,
    -- Until when that holder is working on it; after that a retry with the same request,
    -- or the service's recovery job, may take the key over.
    ADD COLUMN running_until TIMESTAMPTZ,
    ADD COLUMN progress JSONB,
    -- How many holders the key has had (1: never taken over).
    ADD COLUMN attempts INT NOT NULL DEFAULT 1,
    ADD CONSTRAINT idempotency_keys_answered_or_running
        CHECK ((status IS NULL) = (body IS NULL) AND (status IS NOT NULL OR running_until IS NOT NULL));

-- What the recovery jobs look for: keys whose holder stopped before finishing.
CREATE INDEX idempotency_keys_unfinished_idx ON idempotency_keys (running_until) WHERE status IS NULL;
