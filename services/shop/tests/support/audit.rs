//! The invariants once the platform is quiet: no oversold stock, no double charge, every
//! event applied (and what is still running, while it is not).

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What is still in flight (empty when everything the invariants need is settled): a
/// checkout, a payment attempt or refund, an unpaid order, an unpublished event, or a
/// published one some consumer has not applied yet.
pub async fn busy(db: &mut PgConnection) -> Vec<String> {
    let mut counts: Vec<(String, i64)> =
        sqlx::query_as(include_str!("../../../../loadtest/sql/busy.sql")).fetch_all(&mut *db).await.unwrap();
    let unpaid: i64 = sqlx::query_scalar("SELECT count(*) FROM ordering.orders WHERE status = 'pending_payment'")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    counts.push(("unpaid orders".into(), unpaid));
    counts.into_iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect()
}

/// Each published event some consumer acts on and has not applied (consumers keep no
/// record of the events they ignore): its id, its topic, and a
/// description (type, aggregate, when it was written and published, and which groups are
/// missing it): what a run that never becomes quiet is waiting for.
pub async fn stragglers(db: &PgPool) -> Vec<(Uuid, String, String)> {
    sqlx::query_as(
        "SELECT e.id, e.topic, format('%s of %s: written %s, published %s, missing in %s', e.event_type,
                e.aggregate_id, e.created_at::time, e.published_at::time, missing)
         FROM (SELECT id, topic, event_type, aggregate_id, created_at, published_at FROM ordering.outbox
               UNION ALL SELECT id, topic, event_type, aggregate_id, created_at, published_at FROM payments.outbox) e,
         LATERAL (SELECT string_agg(g, ', ') AS missing FROM (
               SELECT 'catalog' AS g WHERE e.topic = 'order.events'
                   AND e.event_type IN ('order.paid', 'order.cancelled', 'order.expired')
                   AND NOT EXISTS (SELECT 1 FROM catalog.inbox i WHERE i.event_id = e.id)
               UNION ALL SELECT 'payments' WHERE e.topic = 'order.events'
                   AND e.event_type IN ('order.cancelled', 'order.expired')
                   AND NOT EXISTS (SELECT 1 FROM payments.inbox i WHERE i.event_id = e.id)
               UNION ALL SELECT 'ordering' WHERE e.topic = 'payment.events'
                   AND e.event_type = 'payment.succeeded'
                   AND NOT EXISTS (SELECT 1 FROM ordering.inbox i WHERE i.event_id = e.id)) m) g
         WHERE e.published_at IS NOT NULL AND missing IS NOT NULL
         ORDER BY e.created_at",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// The invariants of API.md, each violation described: stock conservation here (every
/// product started with `stock`), the rest in the queries the load tests' audit shares.
async fn violations(db: &mut PgConnection, stock: i64) -> Vec<String> {
    let mut found = Vec::new();
    // Stock put in = stock + reserved for pending orders + sold.
    let rows: Vec<(Uuid, i32, i64)> =
        sqlx::query_as(include_str!("../../../../loadtest/sql/stock.sql")).fetch_all(&mut *db).await.unwrap();
    for (product, left, held) in rows {
        if i64::from(left) + held != stock {
            found.push(format!("product {product}: stock {left} + held {held} != {stock}"));
        }
    }
    let rest: Vec<String> =
        sqlx::query_scalar(include_str!("../../../../loadtest/sql/invariants.sql")).fetch_all(&mut *db).await.unwrap();
    found.extend(rest);
    found
}

/// Waits up to `limit` for the platform to be quiet with every invariant holding (every
/// product having started with `stock` units); returns what is still busy and what is
/// violated at the last look (both empty on success). Each look is one snapshot of every
/// schema, so "quiet" and the checks see one moment.
pub async fn settle(db: &PgPool, stock: i64, limit: Duration) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.unwrap();
        let busy = busy(&mut tx).await;
        let found = violations(&mut tx, stock).await;
        tx.rollback().await.unwrap();
        if (busy.is_empty() && found.is_empty()) || Instant::now() > deadline {
            return (busy, found);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
