//! The rules of payments and refunds, with no SQL and no HTTP.

use chrono::{DateTime, Utc};
use common::money::Money;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a payment is. `Processing` is internal: an attempt recorded before the provider
/// was called and not settled yet; clients never see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PaymentStatus {
    Processing,
    Succeeded,
    Failed,
    Refunded,
    PartiallyRefunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Processing => "processing",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "processing" => PaymentStatus::Processing,
            "succeeded" => PaymentStatus::Succeeded,
            "failed" => PaymentStatus::Failed,
            "refunded" => PaymentStatus::Refunded,
            "partially_refunded" => PaymentStatus::PartiallyRefunded,
            _ => return None,
        })
    }

    /// Whether money was captured (and may be refunded, up to what is left).
    pub fn captured(self) -> bool {
        matches!(self, PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded)
    }

    /// The status after `action`: the one place a payment's status moves (the database
    /// guards each move on the status it was decided from).
    pub fn transition(self, action: PaymentAction) -> Result<Self, IllegalPaymentMove> {
        use {PaymentAction::*, PaymentStatus::*};
        match (self, action) {
            (Processing, Capture) => Ok(Succeeded),
            (Processing, Decline) => Ok(Failed),
            (Succeeded | PartiallyRefunded, RefundPart) => Ok(PartiallyRefunded),
            (Succeeded | PartiallyRefunded, RefundRest) => Ok(Refunded),
            (from, action) => Err(IllegalPaymentMove { from, action }),
        }
    }
}

/// What can happen to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentAction {
    /// The provider charged it.
    Capture,
    /// The provider declined it (or never saw it).
    Decline,
    /// Some of what is left is given back.
    RefundPart,
    /// All that is left is given back.
    RefundRest,
}

/// A move the payment status machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {} payment can't take {action:?}", from.as_str())]
pub struct IllegalPaymentMove {
    pub from: PaymentStatus,
    pub action: PaymentAction,
}

impl Outcome {
    /// The move this outcome makes of an unsettled payment.
    pub fn action(&self) -> PaymentAction {
        match self {
            Outcome::Succeeded => PaymentAction::Capture,
            Outcome::Declined(_) => PaymentAction::Decline,
        }
    }
}

/// What the provider said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Declined, with the reason clients see as `failure_code`.
    Declined(String),
}

/// How much of `amount` is left to refund after `refunded`, and the status that refunding
/// `refund` more leaves the payment in, or why it can't be refunded.
pub fn refund(
    status: PaymentStatus,
    amount: Money,
    refunded: Money,
    refund: Option<Money>,
) -> Result<(Money, PaymentStatus), RefundRefused> {
    if !status.captured() {
        return Err(RefundRefused::NotCaptured(status));
    }
    let left = Money::new(amount.amount() - refunded.amount()).map_err(|_| RefundRefused::NothingLeft)?;
    if left.is_zero() {
        return Err(RefundRefused::NothingLeft);
    }
    let refund = refund.unwrap_or(left);
    if refund.is_zero() {
        return Err(RefundRefused::Zero);
    }
    if refund > left {
        return Err(RefundRefused::TooMuch { left });
    }
    let action = if refund == left { PaymentAction::RefundRest } else { PaymentAction::RefundPart };
    let after = status.transition(action).map_err(|_| RefundRefused::NotCaptured(status))?;
    Ok((refund, after))
}

/// Why a refund was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("a {} payment can't be refunded", .0.as_str())]
    NotCaptured(PaymentStatus),
    #[error("the payment is refunded in full already")]
    NothingLeft,
    #[error("must be greater than 0")]
    Zero,
    #[error("must not exceed the {left} left to refund")]
    TooMuch { left: Money },
}

/// A payment as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    #[schema(example = "USD")]
    pub currency: String,
    pub status: PaymentStatus,
    /// Why a failed payment failed: `card_declined`, `insufficient_funds`, `provider_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Where a refund is: `pending` until the provider has carried it out (it is retried
/// until it has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum RefundStatus {
    Pending,
    Succeeded,
}

/// Money given back on a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refund {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
    #[schema(example = "USD")]
    pub currency: String,
    pub status: RefundStatus,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payment_status_machine_allows_exactly_these_moves() {
        use {PaymentAction::*, PaymentStatus::*};
        let all = [Processing, Succeeded, Failed, Refunded, PartiallyRefunded];
        let allowed = [
            (Processing, Capture, Succeeded),
            (Processing, Decline, Failed),
            (Succeeded, RefundPart, PartiallyRefunded),
            (Succeeded, RefundRest, Refunded),
            (PartiallyRefunded, RefundPart, PartiallyRefunded),
            (PartiallyRefunded, RefundRest, Refunded),
        ];
        for from in all {
            for action in [Capture, Decline, RefundPart, RefundRest] {
                let expected = allowed.iter().find(|(f, a, _)| *f == from && *a == action).map(|(_, _, to)| *to);
                assert_eq!(from.transition(action).ok(), expected, "{from:?} + {action:?}");
            }
        }
    }

    fn m(raw: &str) -> Money {
        Money::parse(raw).unwrap()
    }

    #[test]
    fn refunds_never_exceed_what_was_captured() {
        use PaymentStatus::*;
        assert_eq!(refund(Succeeded, m("10.00"), m("0"), None), Ok((m("10.00"), Refunded)));
        assert_eq!(refund(Succeeded, m("10.00"), m("0"), Some(m("2.50"))), Ok((m("2.50"), PartiallyRefunded)));
        assert_eq!(refund(PartiallyRefunded, m("10.00"), m("2.50"), None), Ok((m("7.50"), Refunded)));
        assert_eq!(
            refund(PartiallyRefunded, m("10.00"), m("2.50"), Some(m("7.51"))),
            Err(RefundRefused::TooMuch { left: m("7.50") })
        );
        assert_eq!(refund(Refunded, m("10.00"), m("10.00"), None), Err(RefundRefused::NothingLeft));
        assert_eq!(refund(Failed, m("10.00"), m("0"), None), Err(RefundRefused::NotCaptured(Failed)));
        assert_eq!(refund(Processing, m("10.00"), m("0"), None), Err(RefundRefused::NotCaptured(Processing)));
        assert_eq!(refund(Succeeded, m("10.00"), m("0"), Some(m("0"))), Err(RefundRefused::Zero));
        assert_eq!(RefundRefused::TooMuch { left: m("7.50") }.to_string(), "must not exceed the 7.50 left to refund");
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            PaymentStatus::Processing,
            PaymentStatus::Succeeded,
            PaymentStatus::Failed,
            PaymentStatus::Refunded,
            PaymentStatus::PartiallyRefunded,
        ] {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
        }
    }
}
