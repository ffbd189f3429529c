-- The invariants of API.md that hold whatever the stock was, one row per violation (a
-- sentence). Stock conservation needs the starting stock, which each caller knows its own
-- way. Used by the saga test (services/shop/tests/saga.rs) and the load tests' audit.

WITH books AS (
  -- What the provider charged and gave back for each order.
  SELECT o.id, o.status, o.total, o.refunded_total, coalesce(c.charged, 0) AS charged, coalesce(r.refunded, 0) AS refunded
  FROM ordering.orders o
  LEFT JOIN (SELECT p.order_id, sum(pc.amount) AS charged FROM payments.provider_charges pc
             JOIN payments.payments p ON p.id = pc.payment_id WHERE pc.outcome = 'succeeded' GROUP BY p.order_id) c
         ON c.order_id = o.id
  LEFT JOIN (SELECT p.order_id, sum(pr.amount) AS refunded FROM payments.provider_refunds pr
             JOIN payments.payments p ON p.id = pr.payment_id GROUP BY p.order_id) r
         ON r.order_id = o.id
)
-- 1. Reservations agree with their orders.
SELECT 'order ' || o.id || ' is ' || o.status || ' but its reservation is ' || coalesce(r.status, 'missing')
FROM ordering.orders o LEFT JOIN catalog.reservations r ON r.order_id = o.id
WHERE NOT (   (o.status = 'pending_payment' AND r.status = 'reserved')
           OR (o.status IN ('paid', 'shipped', 'delivered', 'refunded') AND r.status = 'committed')
           OR (o.status = 'cancelled' AND r.status = 'released'))
UNION ALL
SELECT 'reservation ' || r.order_id || ' is ' || r.status || ' without an order'
FROM catalog.reservations r
WHERE r.status <> 'released' AND NOT EXISTS (SELECT 1 FROM ordering.orders o WHERE o.id = r.order_id)
UNION ALL
-- 2. Every paid, shipped, delivered or refunded order has exactly one captured payment
--    equal to its total; its refunds never exceed that amount, and equal it for refunded;
--    the order's refunded_total is the sum of its payment's refunds.
SELECT o.status || ' order ' || o.id || ' has ' || count(p.id) || ' captured payments of its total'
FROM ordering.orders o
LEFT JOIN payments.payments p ON p.order_id = o.id AND p.status IN ('succeeded', 'partially_refunded', 'refunded')
     AND p.amount = o.total
WHERE o.status IN ('paid', 'shipped', 'delivered', 'refunded') GROUP BY o.id HAVING count(p.id) <> 1
UNION ALL
SELECT 'payment ' || p.id || ' refunded ' || p.refunded || ' of ' || p.amount
FROM payments.payments p WHERE p.refunded > p.amount
UNION ALL
SELECT 'refunded order ' || o.id || ' of ' || o.total || ' was refunded ' || p.refunded
FROM ordering.orders o JOIN payments.payments p ON p.order_id = o.id AND p.status <> 'failed'
WHERE o.status = 'refunded' AND p.refunded <> o.total
UNION ALL
SELECT 'order ' || o.id || ' shows ' || o.refunded_total || ' refunded, its payments refunded ' || coalesce(sum(rf.amount), 0)
FROM ordering.orders o
LEFT JOIN payments.payments p ON p.order_id = o.id
LEFT JOIN payments.refunds rf ON rf.payment_id = p.id
GROUP BY o.id, o.refunded_total HAVING o.refunded_total <> coalesce(sum(rf.amount), 0)
UNION ALL
-- 3. Every cancelled order was never charged, or was refunded in full (what the provider
--    charged minus what it gave back is zero).
SELECT 'cancelled order ' || id || ' kept ' || (charged - refunded) || ' of the customer''s money'
FROM books WHERE status = 'cancelled' AND charged <> refunded
UNION ALL
SELECT 'order ' || p.order_id || ' was charged ' || count(*) || ' times'
FROM payments.provider_charges pc JOIN payments.payments p ON p.id = pc.payment_id
WHERE pc.outcome = 'succeeded' GROUP BY p.order_id HAVING count(*) > 1
UNION ALL
-- The provider's books agree: a paid order kept exactly its total less what was refunded
-- of it; no charge exists that the payment service has no record of; no failed payment
-- was charged.
SELECT status || ' order ' || id || ' of ' || total || ' (' || refunded_total || ' refunded): the provider kept '
       || (charged - refunded)
FROM books WHERE status IN ('paid', 'shipped', 'delivered', 'refunded') AND charged - refunded <> total - refunded_total
UNION ALL
SELECT 'the provider charged ' || pc.payment_id || ', which the payment service does not know'
FROM payments.provider_charges pc
WHERE pc.outcome = 'succeeded' AND NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = pc.payment_id)
UNION ALL
SELECT 'payment ' || p.id || ' is failed but the provider charged it'
FROM payments.payments p JOIN payments.provider_charges pc ON pc.payment_id = p.id
WHERE p.status = 'failed' AND pc.outcome = 'succeeded'
UNION ALL
-- 4. Every event is applied once in effect: every event a service acts on is in its
--    inbox (the inbox's key makes "once" hold; the events it ignores leave no row).
SELECT 'the product service never applied ' || e.event_type || ' ' || e.id
FROM ordering.outbox e
WHERE e.topic = 'order.events' AND e.event_type IN ('order.paid', 'order.cancelled', 'order.expired')
  AND NOT EXISTS (SELECT 1 FROM catalog.inbox i WHERE i.event_id = e.id)
UNION ALL
SELECT 'the payment service never applied ' || e.event_type || ' ' || e.id
FROM ordering.outbox e
WHERE e.topic = 'order.events' AND e.event_type IN ('order.cancelled', 'order.expired')
  AND NOT EXISTS (SELECT 1 FROM payments.inbox i WHERE i.event_id = e.id)
UNION ALL
SELECT 'the order service never applied ' || e.event_type || ' ' || e.id
FROM payments.outbox e
WHERE e.topic = 'payment.events' AND e.event_type IN ('payment.succeeded', 'payment.refunded')
  AND NOT EXISTS (SELECT 1 FROM ordering.inbox i WHERE i.event_id = e.id)
