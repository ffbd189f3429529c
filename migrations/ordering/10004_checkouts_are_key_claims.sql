-- A checkout in flight is now the claim on its key in `idempotency_keys` (the common
-- migration 10003, which this one follows: a service migration that builds on a common
-- one takes a version above it). Its progress holds what the checkout record held: the
-- order id, the lines to reserve, and whether they came from the cart. A checkout that
-- came without a key claims one of its own, which no client can send (a control
-- character first). Checkouts still in flight are carried over, so that a retry or the
-- recovery job still finds them.
INSERT INTO idempotency_keys (scope, key, fingerprint, claim, running_until, progress, created_at)
SELECT user_id::text,
       COALESCE(idempotency_key, E'\x01checkout:' || order_id::text),
       COALESCE(fingerprint, ''::bytea),
       gen_random_uuid(),
       running_until,
       jsonb_build_object('order_id', order_id, 'lines', items, 'from_cart', from_cart),
       created_at
FROM checkouts
ON CONFLICT (scope, key) DO NOTHING;

DROP TABLE checkouts;
