//! What the payment service asks the order service before charging: the order's owner,
//! status and total (`GET /internal/orders/{id}`, through `common::client`).

use common::ApiError;
use common::client::Upstream;
use uuid::Uuid;

pub use common::contracts::{OrderStatus, OrderToPay};

#[derive(Debug, Clone)]
pub struct Orders {
    upstream: Upstream,
}

impl Orders {
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    pub async fn order(&self, id: Uuid) -> Result<Option<OrderToPay>, ApiError> {
        self.upstream.get_optional(&format!("/internal/orders/{id}")).await
    }
}
