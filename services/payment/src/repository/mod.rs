//! SQL for the `payments` schema. A payment attempt is recorded before the provider is
//! called and settled after; the settlement and an order's closing take the same per-order
//! lock, so a payment that succeeds as its order expires is always refunded.

use chrono::{DateTime, Utc};
use common::money::Money;
use uuid::Uuid;

use crate::domain::{Payment, PaymentStatus};
use crate::error::Error;

mod attempts;
mod payments;
mod refunds;
mod settlement;

pub use self::attempts::*;
pub use self::payments::*;
pub use self::refunds::*;
pub use self::settlement::*;

struct PaymentRow {
    id: Uuid,
    order_id: Uuid,
    user_id: Uuid,
    amount: Money,
    currency: String,
    status: String,
    failure_code: Option<String>,
    refunded: Money,
    created_at: DateTime<Utc>,
}

/// A payment with what only the service sees.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payment: Payment,
    pub refunded: Money,
}

impl TryFrom<PaymentRow> for Stored {
    type Error = Error;

    fn try_from(row: PaymentRow) -> Result<Self, Error> {
        let status = PaymentStatus::parse(&row.status)
            .ok_or_else(|| Error::Database(sqlx::Error::Decode(format!("payment status {:?}", row.status).into())))?;
        Ok(Stored {
            payment: Payment {
                id: row.id,
                order_id: row.order_id,
                user_id: row.user_id,
                amount: row.amount,
                currency: row.currency,
                status,
                failure_code: row.failure_code,
                created_at: row.created_at,
            },
            refunded: row.refunded,
        })
    }
}
