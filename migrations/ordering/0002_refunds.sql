-- Refunds move orders (API.md): what the order's payment has refunded so far, and the
-- `refunded` status of a shipped or delivered order refunded in full.
ALTER TABLE orders ADD COLUMN refunded_total NUMERIC(12, 2) NOT NULL DEFAULT 0 CHECK (refunded_total >= 0);
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending_payment', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'));
