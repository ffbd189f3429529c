-- A payment attempt is now leased through the claim on its Idempotency-Key in
-- `idempotency_keys` (the common migration 10003, which this one follows: a service
-- migration that builds on a common one takes a version above it): the claim's progress
-- holds the payment's id, and its lease is what the request working on the attempt holds.
-- Attempts still unsettled are carried over, so that a retry or the reconciler finds them.
INSERT INTO idempotency_keys (scope, key, fingerprint, claim, running_until, progress, created_at)
SELECT user_id::text, idempotency_key, fingerprint, gen_random_uuid(), running_until,
       jsonb_build_object('payment_id', id), created_at
FROM payments
WHERE status = 'processing' AND idempotency_key IS NOT NULL
ON CONFLICT (scope, key) DO NOTHING;

DROP INDEX payments_key_idx;
DROP INDEX payments_processing_idx;
ALTER TABLE payments DROP COLUMN idempotency_key, DROP COLUMN fingerprint, DROP COLUMN running_until;
