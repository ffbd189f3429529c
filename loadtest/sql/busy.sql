-- What is still in flight, one row (what, how many) each: a checkout (the claim on its
-- key), an unpaid order's payment attempt or refund, an unpublished event, or a published one some consumer has
-- not applied yet (of the types it acts on: its handler's `wants`; the others leave no
-- inbox row). Empty when the platform is quiet. Used by the saga test and the load
-- tests' audit.
SELECT what, n FROM (
            SELECT 'checkouts' AS what, (SELECT count(*) FROM ordering.idempotency_keys WHERE status IS NULL) AS n
  UNION ALL SELECT 'payment attempts', (SELECT count(*) FROM payments.payments WHERE status = 'processing')
  UNION ALL SELECT 'pending refunds', (SELECT count(*) FROM payments.refunds WHERE status = 'pending')
  UNION ALL SELECT 'unpublished user events', (SELECT count(*) FROM users.outbox WHERE published_at IS NULL)
  UNION ALL SELECT 'unpublished product events', (SELECT count(*) FROM catalog.outbox WHERE published_at IS NULL)
  UNION ALL SELECT 'unpublished order events', (SELECT count(*) FROM ordering.outbox WHERE published_at IS NULL)
  UNION ALL SELECT 'unpublished payment events', (SELECT count(*) FROM payments.outbox WHERE published_at IS NULL)
  UNION ALL SELECT 'order events the product service has not applied', (SELECT count(*) FROM ordering.outbox e
      WHERE e.topic = 'order.events' AND e.event_type IN ('order.paid', 'order.cancelled', 'order.expired')
        AND NOT EXISTS (SELECT 1 FROM catalog.inbox i WHERE i.event_id = e.id))
  UNION ALL SELECT 'order events the payment service has not applied', (SELECT count(*) FROM ordering.outbox e
      WHERE e.topic = 'order.events' AND e.event_type IN ('order.cancelled', 'order.expired')
        AND NOT EXISTS (SELECT 1 FROM payments.inbox i WHERE i.event_id = e.id))
  UNION ALL SELECT 'payment events the order service has not applied', (SELECT count(*) FROM payments.outbox e
      WHERE e.topic = 'payment.events' AND e.event_type IN ('payment.succeeded', 'payment.refunded')
        AND NOT EXISTS (SELECT 1 FROM ordering.inbox i WHERE i.event_id = e.id))
) busy WHERE n > 0
