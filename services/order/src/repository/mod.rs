//! SQL for the `ordering` schema: carts, checkouts in flight, orders and their lines.
//! Every status change is an `UPDATE … WHERE status = <the status it was read in>`, so of
//! two concurrent moves of one order only one can win, and it writes its event in the
//! same transaction.

use std::borrow::Cow;

use common::money::Money;
use uuid::Uuid;

use crate::domain::{OrderLine, OrderStatus};

mod carts;
mod checkouts;
mod orders;

pub use self::carts::*;
pub use self::checkouts::*;
pub use self::orders::*;

/// The largest possible id, where a first page starts (ids are compared with `<`).
const AFTER_ALL: Uuid = Uuid::max();

/// The data of an `order.*` event, with the lines (on creation) borrowed from the order.
type OrderEvent<'a> = common::contracts::OrderEvent<'a, &'a [OrderLine]>;

/// The event of a status move (`order.paid`, `order.cancelled`, `order.expired`, …).
fn moved_event<'a>(
    order_id: Uuid,
    user_id: Uuid,
    from: OrderStatus,
    to: OrderStatus,
    total: Money,
    currency: &'a str,
    cause: Cause<'a>,
) -> OrderEvent<'a> {
    OrderEvent {
        order_id,
        user_id,
        status: to,
        previous_status: Some(from),
        reason: cause.reason.map(Cow::Borrowed),
        total: Some(total),
        currency: Cow::Borrowed(currency),
        items: None,
        payment_id: cause.payment_id,
    }
}
