//! The payment service's background work, safe on every replica at once: settling charge
//! attempts nobody is working on (asking the provider what became of them), and carrying
//! out refunds the provider has not done yet.

use std::time::Duration;

use uuid::Uuid;

use crate::AppState;
use crate::domain::Outcome;
use crate::repository;

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 100;

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = reconcile(&state).await {
            tracing::warn!(error = %err, "could not settle stale payment attempts; will retry");
        }
        carry_out_pending_refunds(&state).await;
    }
}

/// Settles each unsettled attempt whose request gave up or died, with what the provider
/// says happened (an attempt the provider never saw failed with `provider_unavailable`).
async fn reconcile(state: &AppState) -> anyhow::Result<()> {
    for id in repository::stale_attempts(&state.db, BATCH).await? {
        if !repository::claim_attempt(&state.db, id, state.attempt_lease).await? {
            continue; // another replica, or a retry of the request, took it
        }
        let outcome = match tokio::time::timeout(state.provider_timeout, state.provider.lookup(id)).await {
            Ok(Ok(Some(outcome))) => outcome,
            Ok(Ok(None)) => Outcome::Declined("provider_unavailable".into()),
            Ok(Err(_)) | Err(_) => {
                repository::release_attempt(&state.db, id).await?;
                continue;
            }
        };
        let mut tx = state.db.begin().await?;
        let (payment, refunds) = repository::settle(&mut tx, id, &outcome).await?;
        tx.commit().await?;
        tracing::info!(payment_id = %id, status = payment.status.as_str(), "settled a payment attempt");
        carry_out_refunds(state, &refunds).await;
    }
    Ok(())
}

/// Has the provider carry out these refunds now; any it can't are retried by the job.
pub async fn carry_out_refunds(state: &AppState, refunds: &[Uuid]) {
    for id in refunds {
        carry_out(state, Some(*id)).await;
    }
}

/// Carries out every pending refund it can claim.
pub async fn carry_out_pending_refunds(state: &AppState) {
    while carry_out(state, None).await {}
}

/// Carries out one pending refund (`only` that one, or any); `true` if one was done.
async fn carry_out(state: &AppState, only: Option<Uuid>) -> bool {
    let attempt = async {
        let mut tx = state.db.begin().await?;
        let Some((refund_id, payment_id, amount)) = repository::claim_pending_refund(&mut tx, only).await? else {
            return Ok::<bool, anyhow::Error>(false);
        };
        state.provider.refund(refund_id, payment_id, amount).await?;
        repository::mark_refunded(&mut tx, refund_id).await?;
        tx.commit().await?;
        metrics::counter!("refunds_total").increment(1);
        Ok(true)
    };
    match tokio::time::timeout(state.provider_timeout * 2, attempt).await {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "could not carry out a refund; will retry");
            false
        }
        Err(_) => {
            tracing::warn!("the provider did not carry out a refund in time; will retry");
            false
        }
    }
}
