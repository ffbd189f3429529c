-- The payment service (schema `payments`): payments, refunds, the orders known to be over,
-- and the ledger of the simulated card provider.

-- One charge attempt. `processing` is written (and committed) before the provider is
-- called, so a crash or a timeout never leaves a charge nobody knows about; the attempt is
-- then settled as `succeeded` or `failed`, by the request or by the reconciler.
CREATE TABLE payments (
    id           UUID PRIMARY KEY,
    order_id     UUID NOT NULL,
    user_id      UUID NOT NULL,
    amount       NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL CHECK (currency = 'USD'),
    status       TEXT NOT NULL
                 CHECK (status IN ('processing', 'succeeded', 'failed', 'refunded', 'partially_refunded')),
    failure_code TEXT,
    -- The request that started it: a retry with the same key resumes this attempt. Cleared
    -- when the key is 24 hours old, so the key can be used again.
    idempotency_key TEXT,
    fingerprint  BYTEA NOT NULL,
    -- While `processing`: until when the request that made it is working on it (a lease);
    -- after that, a retry with the same key or the reconciler settles it.
    running_until TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- What has been given back so far; never more than `amount`.
    refunded     NUMERIC(12, 2) NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- At most one payment per order that is charging or has charged: a second attempt while
-- one runs, or after one succeeded, violates this and is refused.
CREATE UNIQUE INDEX payments_one_charge_per_order_idx
    ON payments (order_id) WHERE status IN ('processing', 'succeeded', 'refunded', 'partially_refunded');
CREATE UNIQUE INDEX payments_key_idx ON payments (user_id, idempotency_key);
CREATE INDEX payments_order_idx ON payments (order_id, id);
CREATE INDEX payments_user_idx ON payments (user_id, id DESC);
CREATE INDEX payments_processing_idx ON payments (running_until) WHERE status = 'processing';

-- Money given back. Decided (and counted in `payments.refunded`) in one transaction with
-- its `payment.refunded`; `pending` until the provider has carried it out.
CREATE TABLE refunds (
    id         UUID PRIMARY KEY,
    payment_id UUID NOT NULL REFERENCES payments (id),
    amount     NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
    reason     TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'succeeded')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE INDEX refunds_pending_idx ON refunds (created_at) WHERE status = 'pending';

-- Orders that were cancelled or expired (from `order.events`). A payment that succeeds for
-- one of them is refunded at once, whichever of the two was applied first.
CREATE TABLE closed_orders (
    order_id  UUID PRIMARY KEY,
    closed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The simulated card provider's own books (what a real provider would hold on its side),
-- keyed by our payment and refund ids so that retried calls never charge or refund twice.
CREATE TABLE provider_charges (
    payment_id   UUID PRIMARY KEY,
    amount       NUMERIC(12, 2) NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('succeeded', 'declined')),
    failure_code TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE provider_refunds (
    refund_id  UUID PRIMARY KEY,
    payment_id UUID NOT NULL REFERENCES provider_charges (payment_id),
    amount     NUMERIC(12, 2) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
