//! SQL for the `payments` schema. A payment attempt is recorded before the provider is
//! called and settled after; the settlement and an order's closing take the same per-order
//! lock, so a payment that succeeds as its order expires is always refunded.

use chrono::{DateTime, Utc};
use common::money::Money;
use uuid::Uuid;

use crate::domain::{Payment, PaymentStatus};

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
    status: PaymentStatus,
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

impl From<PaymentRow> for Stored {
    fn from(row: PaymentRow) -> Self {
        Stored {
            payment: Payment {
                id: row.id,
                order_id: row.order_id,
                user_id: row.user_id,
                amount: row.amount,
                currency: row.currency,
                status: row.status,
                failure_code: row.failure_code,
                created_at: row.created_at,
            },
            refunded: row.refunded,
        }
    }
}
