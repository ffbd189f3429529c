-- The order service (schema `ordering`): carts, orders, and the checkouts on their way to
-- becoming orders.

-- One line per product in a user's cart. Names and prices are not kept here: the cart
-- shows the product service's current ones.
CREATE TABLE cart_items (
    user_id    UUID NOT NULL,
    product_id UUID NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, product_id)
);

CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    user_id          UUID NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending_payment', 'paid', 'shipped', 'delivered', 'cancelled')),
    total            NUMERIC(12, 2) NOT NULL CHECK (total >= 0),
    currency         TEXT NOT NULL CHECK (currency = 'USD'),
    shipping_address JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When an unpaid order expires; kept after payment for the record.
    expires_at       TIMESTAMPTZ NOT NULL
);

-- A customer's orders, newest first (ids are UUIDv7, so id order is creation order).
CREATE INDEX orders_user_idx ON orders (user_id, id DESC);
-- What the expiry job scans: only the unpaid orders, by deadline.
CREATE INDEX orders_expiry_idx ON orders (expires_at) WHERE status = 'pending_payment';

-- The lines of an order, with the name and unit price the reservation returned.
CREATE TABLE order_items (
    order_id   UUID NOT NULL REFERENCES orders (id),
    product_id UUID NOT NULL,
    name       TEXT NOT NULL,
    unit_price NUMERIC(12, 2) NOT NULL CHECK (unit_price >= 0),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

-- A checkout that has asked (or is about to ask) the product service to reserve stock
-- under `order_id`, written before that call. It is deleted in the transaction that stores
-- the order; one still here after a while, with no request working on it, belongs to a
-- checkout that died or failed half way, and the recovery job releases its reservation (if
-- any) with `order.cancelled`. A retry with the same Idempotency-Key finds it and finishes
-- it under the same order id.
CREATE TABLE checkouts (
    order_id         UUID PRIMARY KEY,
    user_id          UUID NOT NULL,
    -- (user, Idempotency-Key) when the client sent one.
    idempotency_key  TEXT,
    -- What that request asked for, so the key reused with another body is refused.
    fingerprint      BYTEA,
    -- The lines to reserve, fixed when the checkout starts.
    items            JSONB NOT NULL,
    -- Whether the lines came from the cart, which the order then empties of them.
    from_cart        BOOLEAN NOT NULL,
    -- Until when a request is working on it (a lease): another request with the same key
    -- meanwhile is `409 request_in_progress`, and the recovery job leaves it alone. A
    -- request that gives up ends its lease, so a retry can resume at once.
    running_until    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX checkouts_key_idx ON checkouts (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX checkouts_created_at_idx ON checkouts (created_at);
