-- Each product's stock and the units held for it (reserved by pending orders or sold):
-- stock + held is what was put in, which must never change but by admin deltas.
-- Used by the saga test and the load tests' audit.
SELECT p.id, p.stock, coalesce(h.held, 0)::bigint AS held
FROM catalog.products p
LEFT JOIN (SELECT ri.product_id, sum(ri.quantity) AS held
           FROM catalog.reservation_items ri JOIN catalog.reservations r ON r.order_id = ri.order_id
           WHERE r.status IN ('reserved', 'committed') GROUP BY ri.product_id) h ON h.product_id = p.id
