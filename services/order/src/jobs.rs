//! The order service's background work, safe to run on every replica at once: expiring
//! unpaid orders, and releasing checkouts that died half way.

use std::time::Duration;

use sqlx::PgPool;

use crate::domain::{OrderStatus, StatusChanged};
use crate::live::Live;
use crate::repository;

/// How often the jobs look for work.
const EVERY: Duration = Duration::from_millis(500);
/// Orders or checkouts handled per round.
const BATCH: i64 = 100;

/// Runs both jobs until the process ends. `recover_after` is how long a checkout may stay
/// unfinished before its reservation is released.
pub async fn run(db: PgPool, live: Live, recover_after: Duration) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The relay is woken for what a round emitted once the round is over.
        common::events::waking(round(&db, &live, recover_after)).await;
    }
}

async fn round(db: &PgPool, live: &Live, recover_after: Duration) {
    loop {
        match repository::expire_due(db, BATCH).await {
            Ok(expired) => {
                let full = expired.len() as i64 == BATCH;
                if !expired.is_empty() {
                    tracing::info!(count = expired.len(), "expired unpaid orders");
                    metrics::counter!("orders_expired_total").increment(expired.len() as u64);
                }
                for order in expired {
                    let change = StatusChanged::new(order.id, OrderStatus::Cancelled, order.updated_at);
                    live.publish(order.user_id, change).await;
                }
                if !full {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not expire unpaid orders; will retry");
                break;
            }
        }
    }
    match repository::release_stale_checkouts(db, recover_after, BATCH).await {
        Ok(released) if !released.is_empty() => {
            tracing::warn!(count = released.len(), "released checkouts that never became orders");
            metrics::counter!("checkouts_released_total").increment(released.len() as u64);
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not release stale checkouts; will retry"),
    }
}
