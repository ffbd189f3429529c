//! The card provider, behind a trait, and the simulated one the platform ships with.
//!
//! Every call names our own id (the payment's for a charge, the refund's for a refund),
//! as real providers' idempotency keys do: calling again with the same id returns what
//! the first call did, so retrying a call that timed out never charges or refunds twice.

use std::time::Duration;

use common::money::Money;
use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Outcome;

/// Why a provider call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider is down or refused to answer; nothing was done.
    #[error("the card provider is unavailable")]
    Unavailable,
    /// The token names no card.
    #[error("the card token is not valid")]
    InvalidToken,
    /// The call may or may not have taken effect (say, its answer was lost).
    #[error("the card provider's answer was lost")]
    Unknown,
}

pub trait Provider: Send + Sync + 'static {
    /// Charges `amount` to the card of `token`, once per `payment_id`.
    fn charge<'a>(
        &'a self,
        payment_id: Uuid,
        amount: Money,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>>;

    /// What became of the charge of `payment_id`, if it was ever made.
    fn lookup(&self, payment_id: Uuid) -> BoxFuture<'_, Result<Option<Outcome>, ProviderError>>;

    /// Makes sure no charge of `payment_id` can happen any more, and says what became of
    /// it: declined if it had not been made (a charge arriving later gets that answer), or
    /// its outcome if it had.
    fn void(&self, payment_id: Uuid) -> BoxFuture<'_, Result<Outcome, ProviderError>>;

    /// Gives back `amount` of the charge of `payment_id`, once per `refund_id`.
    fn refund(&self, refund_id: Uuid, payment_id: Uuid, amount: Money) -> BoxFuture<'_, Result<(), ProviderError>>;
}

/// The test card tokens of API.md, plus `tok_providerTimeout` (charges, then answers too
/// late), which exercises the settling of charges whose outcome the caller never heard.
pub const TEST_TOKENS: [&str; 5] =
    ["tok_visa", "tok_chargeDeclined", "tok_insufficientFunds", "tok_providerDown", "tok_providerTimeout"];

/// A provider that keeps its books in the `provider_*` tables, so that it is idempotent
/// and survives restarts like a real one.
pub struct Simulated {
    pub db: PgPool,
}

/// How late `tok_providerTimeout` answers: longer than any caller waits.
const LATE: Duration = Duration::from_secs(60);

impl Simulated {
    async fn record(&self, payment_id: Uuid, amount: Money, outcome: &Outcome) -> Result<Outcome, ProviderError> {
        let (word, code) = match outcome {
            Outcome::Succeeded => ("succeeded", None),
            Outcome::Declined(code) => ("declined", Some(code.as_str())),
        };
        // A repeated call answers what the first one did: the charge recorded now, or the
        // one recorded before.
        let recorded: Option<(String, Option<String>)> = sqlx::query_as(
            "WITH charged AS (
                 INSERT INTO payments.provider_charges (payment_id, amount, outcome, failure_code)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (payment_id) DO NOTHING
                 RETURNING outcome, failure_code)
             SELECT outcome, failure_code FROM charged
             UNION ALL
             SELECT outcome, failure_code FROM payments.provider_charges
             WHERE payment_id = $1 AND NOT EXISTS (SELECT 1 FROM charged)",
        )
        .bind(payment_id)
        .bind(amount.amount())
        .bind(word)
        .bind(code)
        .fetch_optional(&self.db)
        .await
        // The insert may have committed with its answer lost.
        .map_err(|_| ProviderError::Unknown)?;
        match recorded {
            Some(row) => Ok(outcome_of(row)),
            // A call for the same payment committed meanwhile: its answer.
            None => self.lookup_charge(payment_id).await.ok().flatten().ok_or(ProviderError::Unknown),
        }
    }

    async fn lookup_charge(&self, payment_id: Uuid) -> Result<Option<Outcome>, ProviderError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT outcome, failure_code FROM payments.provider_charges WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_optional(&self.db)
                .await
                .map_err(|_| ProviderError::Unavailable)?;
        Ok(row.map(outcome_of))
    }
}

/// A recorded charge's outcome.
fn outcome_of((outcome, code): (String, Option<String>)) -> Outcome {
    match outcome.as_str() {
        "succeeded" => Outcome::Succeeded,
        _ => Outcome::Declined(code.unwrap_or_default()),
    }
}

impl Provider for Simulated {
    fn charge<'a>(
        &'a self,
        payment_id: Uuid,
        amount: Money,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            match token {
                "tok_visa" => self.record(payment_id, amount, &Outcome::Succeeded).await,
                "tok_chargeDeclined" => {
                    self.record(payment_id, amount, &Outcome::Declined("card_declined".into())).await
                }
                "tok_insufficientFunds" => {
                    self.record(payment_id, amount, &Outcome::Declined("insufficient_funds".into())).await
                }
                "tok_providerDown" => Err(ProviderError::Unavailable),
                "tok_providerTimeout" => {
                    let outcome = self.record(payment_id, amount, &Outcome::Succeeded).await?;
                    tokio::time::sleep(LATE).await;
                    Ok(outcome)
                }
                _ => Err(ProviderError::InvalidToken),
            }
        })
    }

    fn lookup(&self, payment_id: Uuid) -> BoxFuture<'_, Result<Option<Outcome>, ProviderError>> {
        Box::pin(self.lookup_charge(payment_id))
    }

    fn void(&self, payment_id: Uuid) -> BoxFuture<'_, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            let declined = Outcome::Declined("provider_unavailable".into());
            // No amount is known here, and none is charged: a voided charge holds zero.
            self.record(payment_id, Money::ZERO, &declined).await
        })
    }

    fn refund(&self, refund_id: Uuid, payment_id: Uuid, amount: Money) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO payments.provider_refunds (refund_id, payment_id, amount) VALUES ($1, $2, $3)
                 ON CONFLICT (refund_id) DO NOTHING",
            )
            .bind(refund_id)
            .bind(payment_id)
            .bind(amount.amount())
            .execute(&self.db)
            .await
            .map_err(|_| ProviderError::Unavailable)?;
            Ok(())
        })
    }
}
