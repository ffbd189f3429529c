//! The payment service's background work, safe on every replica at once: settling charge
//! attempts nobody is working on (asking the provider what became of them), and carrying
//! out refunds the provider has not done yet.

use std::time::Duration;

use axum::http::StatusCode;
use common::idempotency::{self, Claim};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Outcome, PaymentStatus};
use crate::repository::{self, AttemptProgress};

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 100;

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The relay is woken for what a round emitted once the round is over.
        common::events::waking(async {
            if let Err(err) = reconcile(&state).await {
                tracing::warn!(error = %err, "could not settle stale payment attempts; will retry");
            }
            carry_out_pending_refunds(&state).await;
        })
        .await;
    }
}

/// Settles each unsettled attempt whose request gave up or died, with what the provider
/// says happened. An attempt the provider never saw is voided there first (so a charge
/// still on its way is declined) and fails with `provider_unavailable`.
async fn reconcile(state: &AppState) -> anyhow::Result<()> {
    // Keys whose request stopped before settling its attempt (or, a refund's, before
    // anything was done): this replica holds them now, for the lease.
    let lapsed = idempotency::take_over_lapsed::<Option<AttemptProgress>>(&state.db, state.attempt_lease, BATCH)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for claim in lapsed {
        let key = claim.key().to_owned();
        if let Err(err) = settle_stale(state, claim).await {
            tracing::warn!(key, error = %err, "could not settle a payment attempt; will retry");
        }
    }
    Ok(())
}

async fn settle_stale(state: &AppState, mut claim: Claim<Option<AttemptProgress>>) -> anyhow::Result<()> {
    let attempt = match claim.resumed.take().flatten() {
        Some(progress) => repository::find_attempt(&state.db, progress.payment_id).await?,
        None => None,
    };
    let Some(attempt) = attempt else {
        // Nothing was charged under it (a refund's key, whose transaction never
        // committed): the key is free again.
        claim.abandon(&state.db).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(());
    };
    let mut tx = state.db.begin().await?;
    if attempt.status != PaymentStatus::Processing {
        // Settled, but its answer was never stored: it is what the key answers now.
        claim.complete(&mut tx, StatusCode::CREATED, &attempt).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
        return Ok(());
    }
    let id = attempt.id;
    let asked = async {
        match state.provider.lookup(id).await? {
            Some(outcome) => Ok(outcome),
            None => state.provider.void(id).await,
        }
    };
    let outcome: Outcome = match tokio::time::timeout(state.provider_timeout * 2, asked).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => {
            drop(tx);
            claim.lapse(&state.db).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(());
        }
    };
    let (payment, refunds) = repository::settle(&mut tx, &attempt, &outcome, &claim).await?;
    tx.commit().await?;
    tracing::info!(payment_id = %id, status = payment.status.as_str(), "settled a payment attempt");
    carry_out_refunds(state, &refunds).await;
    Ok(())
}

pub async fn carry_out_refunds(state: &AppState, refunds: &[Uuid]) {
    for id in refunds {
        carry_out(state, Some(*id)).await;
    }
}

/// Carries out the pending refunds, going on past any that fail (they are retried).
pub async fn carry_out_pending_refunds(state: &AppState) {
    carry_out(state, None).await;
}

async fn carry_out(state: &AppState, only: Option<Uuid>) {
    let pending = match repository::pending_refunds(&state.db, only, BATCH).await {
        Ok(pending) => pending,
        Err(err) => {
            tracing::warn!(error = %err, "could not read pending refunds; will retry");
            return;
        }
    };
    for (refund_id, payment_id, amount) in pending {
        let done = tokio::time::timeout(state.provider_timeout, state.provider.refund(refund_id, payment_id, amount));
        match done.await {
            Ok(Ok(())) => match repository::mark_refunded(&state.db, refund_id).await {
                Ok(()) => metrics::counter!("refunds_total").increment(1),
                Err(err) => tracing::warn!(%refund_id, error = %err, "a refund was done but not marked; will retry"),
            },
            Ok(Err(err)) => tracing::warn!(%refund_id, error = %err, "the provider did not refund; will retry"),
            Err(_) => tracing::warn!(%refund_id, "the provider did not refund in time; will retry"),
        }
    }
}
