//! What the payment service asks the order service before charging: the order's owner,
//! status and total (`GET /internal/orders/{id}`, through `common::client`).

use axum::http::StatusCode;
use common::ApiError;
use common::client::Upstream;
use common::money::Money;
use reqwest::Method;
use serde::Deserialize;
use uuid::Uuid;

/// An order, as far as paying it goes.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderToPay {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub total: Money,
    pub currency: String,
}

#[derive(Debug, Clone)]
pub struct Orders {
    upstream: Upstream,
}

impl Orders {
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    pub async fn order(&self, id: Uuid) -> Result<Option<OrderToPay>, ApiError> {
        let answer = self.upstream.call::<()>(Method::GET, &format!("/internal/orders/{id}"), None, true).await?;
        match answer.status {
            StatusCode::OK => Ok(Some(answer.json()?)),
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                Err(ApiError::internal(anyhow::anyhow!("the order service answered an order read with {status}")))
            }
        }
    }
}
