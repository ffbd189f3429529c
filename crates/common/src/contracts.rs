//! The contracts between the services (API.md, "Events" and the order status machine):
//! the topics, every event type, the payloads one service writes and another reads, and
//! the order statuses the order service moves and the payment service reads, and what the
//! payment service reads of an order before charging it ([`OrderToPay`]). Emitters
//! and consumers name these, so a renamed field or event fails to compile instead of
//! failing a consumer at run time; the tests below pin the JSON each one is on the wire.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

/// One topic per owning service; the record key is the aggregate id.
pub mod topic {
    pub const USER: &str = "user.events";
    pub const PRODUCT: &str = "product.events";
    pub const ORDER: &str = "order.events";
    pub const PAYMENT: &str = "payment.events";
}

/// Declares [`EventType`] from one table: each event's variant, its envelope `type` and
/// the topic of the service that owns it.
macro_rules! event_types {
    ($($variant:ident => $name:literal on $topic:ident,)*) => {
        /// Every event the platform emits, by the `type` of its envelope.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            pub const ALL: &[EventType] = &[$(EventType::$variant,)*];

            /// The envelope's `type`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The topic its owner publishes it to.
            pub const fn topic(self) -> &'static str {
                match self {
                    $(EventType::$variant => topic::$topic,)*
                }
            }
        }
    };
}

event_types! {
    UserRegistered => "user.registered" on USER,
    ProductCreated => "product.created" on PRODUCT,
    ProductUpdated => "product.updated" on PRODUCT,
    ProductStockChanged => "product.stock_changed" on PRODUCT,
    OrderCreated => "order.created" on ORDER,
    OrderPaid => "order.paid" on ORDER,
    OrderShipped => "order.shipped" on ORDER,
    OrderDelivered => "order.delivered" on ORDER,
    OrderCancelled => "order.cancelled" on ORDER,
    OrderExpired => "order.expired" on ORDER,
    OrderRefunded => "order.refunded" on ORDER,
    PaymentSucceeded => "payment.succeeded" on PAYMENT,
    PaymentFailed => "payment.failed" on PAYMENT,
    PaymentRefunded => "payment.refunded" on PAYMENT,
}

impl EventType {
    /// The event type an envelope's `type` names, if it is one of ours.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.as_str() == raw)
    }
}

// --- the order status machine ------------------------------------------------------------

/// Where an order is in its life (API.md, "Order service"); a `text` column in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    /// Shipped or delivered, then refunded in full.
    Refunded,
}

/// What the payment service reads of an order before charging it (`GET
/// /internal/orders/{id}`): its owner, status and total, one row and no lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderToPay {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total: Money,
    #[schema(example = "USD")]
    pub currency: String,
}

/// What can happen to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    /// `payment.succeeded` arrived.
    Pay,
    Ship,
    Deliver,
    /// By the customer or an admin; a paid order is refunded by the payment service.
    Cancel,
    /// The payment window passed.
    Expire,
    /// An admin refunded the payment of a shipped or delivered order in full (a paid
    /// order refunded in full is cancelled instead).
    Refund,
}

impl OrderAction {
    /// The event that announces the move.
    pub const fn event_type(self) -> EventType {
        match self {
            OrderAction::Pay => EventType::OrderPaid,
            OrderAction::Ship => EventType::OrderShipped,
            OrderAction::Deliver => EventType::OrderDelivered,
            OrderAction::Cancel => EventType::OrderCancelled,
            OrderAction::Expire => EventType::OrderExpired,
            OrderAction::Refund => EventType::OrderRefunded,
        }
    }

    /// The participle of the move: "an order can't be {word}".
    fn word(self) -> &'static str {
        match self {
            OrderAction::Pay => "paid",
            OrderAction::Ship => "shipped",
            OrderAction::Deliver => "delivered",
            OrderAction::Cancel => "cancelled",
            OrderAction::Expire => "expired",
            OrderAction::Refund => "refunded",
        }
    }
}

/// A move the status machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {} can't be {}", from.as_str(), action.word())]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub action: OrderAction,
}

impl OrderStatus {
    /// The one transition function: the status after `action`, or why it can't happen.
    pub fn transition(self, action: OrderAction) -> Result<OrderStatus, IllegalTransition> {
        use {OrderAction::*, OrderStatus::*};
        match (self, action) {
            (PendingPayment, Pay) => Ok(Paid),
            (Paid, Ship) => Ok(Shipped),
            (Shipped, Deliver) => Ok(Delivered),
            (PendingPayment | Paid, Cancel) => Ok(Cancelled),
            (PendingPayment, Expire) => Ok(Cancelled),
            (Shipped | Delivered, Refund) => Ok(Refunded),
            (from, action) => Err(IllegalTransition { from, action }),
        }
    }

    pub const ALL: [OrderStatus; 6] = {
        use OrderStatus::*;
        [PendingPayment, Paid, Shipped, Delivered, Cancelled, Refunded]
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

// --- payloads ----------------------------------------------------------------------------

/// The data of every `order.*` event: the order's id, owner and new status, with what
/// the consumers need of the rest (the total for refunds; the lines, `Items`, on
/// creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent<'a, Items = serde_json::Value> {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<OrderStatus>,
    /// Why it was cancelled: `customer`, `admin`, `payment_timeout`, `checkout_failed`,
    /// `refunded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Money>,
    pub currency: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
    /// The payment that moved it (`order.paid`, a cancellation by refund).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<Uuid>,
}

/// `payment.succeeded` and `payment.failed`: the provider's answer to a charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSettled<'a> {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    pub currency: Cow<'a, str>,
    /// `payment.failed`: the provider's reason (`card_declined`, …); `null` otherwise.
    pub failure_code: Option<Cow<'a, str>>,
}

/// `payment.refunded`: a refund decided (the provider carries it out after).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded<'a> {
    pub payment_id: Uuid,
    pub refund_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// This refund.
    pub amount: Money,
    /// Everything the payment has refunded, this one included.
    pub refunded_total: Money,
    pub currency: Cow<'a, str>,
    /// `admin` (asked for), or `order_cancelled` (the order closed).
    pub reason: Cow<'a, str>,
}

/// `product.updated`: the product as it is now (`product.created` carries the product
/// alone), or as it was when `deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductUpdated<Product> {
    pub product: Product,
    pub deleted: bool,
}

/// `product.stock_changed`: a product's stock after a change, and why it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockChanged<'a> {
    pub product_id: Uuid,
    pub stock: i32,
    /// `reserved`, `released` (a reservation ended), `set` or `adjusted` (an admin).
    pub reason: Cow<'a, str>,
    /// The order whose reservation moved it, if one did.
    pub order_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn event_types_round_trip_through_their_names_and_belong_to_their_owners_topic() {
        for &kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            let owner = kind.as_str().split('.').next().unwrap();
            assert_eq!(kind.topic(), format!("{owner}.events"), "{kind:?}");
        }
        assert_eq!(EventType::parse("order.lost"), None);
        assert_eq!(OrderAction::Expire.event_type(), EventType::OrderExpired);
    }

    #[test]
    fn the_status_machine_allows_exactly_the_moves_of_the_contract() {
        use {OrderAction::*, OrderStatus::*};
        let allowed = [
            (PendingPayment, Pay, Paid),
            (PendingPayment, Cancel, Cancelled),
            (PendingPayment, Expire, Cancelled),
            (Paid, Ship, Shipped),
            (Paid, Cancel, Cancelled),
            (Shipped, Deliver, Delivered),
            (Shipped, Refund, Refunded),
            (Delivered, Refund, Refunded),
        ];
        for from in OrderStatus::ALL {
            for action in [Pay, Ship, Deliver, Cancel, Expire, Refund] {
                let expected = allowed.iter().find(|(f, a, _)| *f == from && *a == action).map(|(_, _, to)| *to);
                assert_eq!(from.transition(action).ok(), expected, "{from:?} + {action:?}");
            }
        }
        let err = Delivered.transition(Cancel).unwrap_err();
        assert_eq!(err.to_string(), "an order that is delivered can't be cancelled");
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(OrderStatus::parse("lost"), None);
    }

    const A: Uuid = Uuid::from_u128(0xa);
    const B: Uuid = Uuid::from_u128(0xb);
    const C: Uuid = Uuid::from_u128(0xc);
    const D: Uuid = Uuid::from_u128(0xd);

    /// Each payload as it is on the wire, and read back as it was written.
    fn pinned<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        payload: T,
        wire: serde_json::Value,
    ) {
        assert_eq!(serde_json::to_value(&payload).unwrap(), wire);
        assert_eq!(serde_json::from_value::<T>(wire).unwrap(), payload);
    }

    fn money(raw: &str) -> Money {
        Money::parse(raw).unwrap()
    }

    #[test]
    fn order_events_are_pinned() {
        let moved: OrderEvent<'static> = OrderEvent {
            order_id: A,
            user_id: B,
            status: OrderStatus::Cancelled,
            previous_status: Some(OrderStatus::Paid),
            reason: Some("refunded".into()),
            total: Some(money("12.50")),
            currency: "USD".into(),
            items: None,
            payment_id: Some(C),
        };
        pinned(
            moved,
            json!({
                "order_id": A, "user_id": B, "status": "cancelled", "previous_status": "paid",
                "reason": "refunded", "total": "12.50", "currency": "USD", "payment_id": C,
            }),
        );
        let created: OrderEvent<'static> = OrderEvent {
            order_id: A,
            user_id: B,
            status: OrderStatus::PendingPayment,
            previous_status: None,
            reason: None,
            total: Some(money("3.00")),
            currency: "USD".into(),
            items: Some(json!([{ "product_id": D, "quantity": 1 }])),
            payment_id: None,
        };
        pinned(
            created,
            json!({
                "order_id": A, "user_id": B, "status": "pending_payment", "total": "3.00", "currency": "USD",
                "items": [{ "product_id": D, "quantity": 1 }],
            }),
        );
    }

    #[test]
    fn payment_events_are_pinned() {
        let settled = PaymentSettled {
            payment_id: A,
            order_id: B,
            user_id: C,
            amount: money("9.99"),
            currency: "USD".into(),
            failure_code: Some("card_declined".into()),
        };
        pinned(
            settled,
            json!({
                "payment_id": A, "order_id": B, "user_id": C, "amount": "9.99", "currency": "USD",
                "failure_code": "card_declined",
            }),
        );
        let refunded = PaymentRefunded {
            payment_id: A,
            refund_id: D,
            order_id: B,
            user_id: C,
            amount: money("1.00"),
            refunded_total: money("4.00"),
            currency: "USD".into(),
            reason: "admin".into(),
        };
        pinned(
            refunded,
            json!({
                "payment_id": A, "refund_id": D, "order_id": B, "user_id": C, "amount": "1.00",
                "refunded_total": "4.00", "currency": "USD", "reason": "admin",
            }),
        );
    }

    #[test]
    fn an_order_to_pay_is_pinned() {
        let order = OrderToPay {
            id: A,
            user_id: B,
            status: OrderStatus::PendingPayment,
            total: money("12.30"),
            currency: "USD".into(),
        };
        let wire = json!({ "id": A, "user_id": B, "status": "pending_payment", "total": "12.30", "currency": "USD" });
        pinned(order, wire);
    }

    #[test]
    fn product_updates_are_pinned() {
        let product = json!({ "id": A, "name": "Lamp" });
        pinned(
            ProductUpdated { product: product.clone(), deleted: true },
            json!({ "product": product, "deleted": true }),
        );
    }

    #[test]
    fn stock_changes_are_pinned() {
        let changed = StockChanged { product_id: A, stock: 7, reason: "reserved".into(), order_id: Some(B) };
        pinned(changed, json!({ "product_id": A, "stock": 7, "reason": "reserved", "order_id": B }));
        let restocked = StockChanged { product_id: A, stock: 9, reason: "adjusted".into(), order_id: None };
        pinned(restocked, json!({ "product_id": A, "stock": 9, "reason": "adjusted", "order_id": null }));
    }
}
