//! The payment service: charges through a card provider (simulated), refunds, and the
//! close of the checkout saga.
//!
//! - [`domain`]: payment statuses, refund rules;
//! - [`provider`]: the provider trait and the simulated provider with its test tokens;
//! - [`steps`]: the business steps the handlers call: paying an order (safe against
//!   timeouts and crashes) and refunding a payment on an admin's request, once per key;
//! - [`repository`]: the SQL of the `payments` schema;
//! - [`orders`]: what it asks the order service;
//! - [`http`]: the handlers of `/api/payments/*`;
//! - [`events`]: closed orders are refunded;
//! - [`jobs`]: settling abandoned attempts, carrying out refunds.

pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod jobs;
pub mod orders;
pub mod provider;
pub mod repository;
pub mod steps;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use common::client::Breaker;
use common::config::{CommonConfig, ConfigError, Env};
use common::db::Schema;
use common::finish::TaskTracker;
use common::http::Shared;
use common::ratelimit::Limiter;
use common::service::Identity;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

use crate::orders::Orders;
use crate::provider::{Provider, Simulated};

pub const SERVICE: &str = "payment";
pub const SCHEMA: Schema = Schema { name: "payments", role: "payments_svc" };
pub const DEFAULT_PORT: u16 = 8084;
pub const DEFAULT_ORDER_SERVICE_URL: &str = "http://127.0.0.1:8083";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/payments");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `ORDER_SERVICE_URL`: the order service's base URL.
    pub order_service_url: String,
    /// `UPSTREAM_TIMEOUT` (2s): the longest one call to another service may take.
    pub upstream_timeout: Duration,
    /// `PROVIDER_TIMEOUT` (5s): the longest one call to the card provider may take.
    pub provider_timeout: Duration,
    /// `PAYMENT_RATE_LIMIT` (30): payments a minute per customer.
    pub payments_per_minute: NonZeroU32,
}

impl Config {
    /// The payment service's variables on top of `common`; `order_default` is where the
    /// order service is unless `ORDER_SERVICE_URL` says (in `shop`: the same process).
    pub fn with_common(common: CommonConfig, env: &Env, order_default: &str) -> Result<Self, ConfigError> {
        let order_service_url = common::config::service_url(env, "ORDER_SERVICE_URL", order_default)?;
        Ok(Self {
            common,
            order_service_url,
            upstream_timeout: env.duration("UPSTREAM_TIMEOUT", Duration::from_secs(2))?,
            provider_timeout: env.duration("PROVIDER_TIMEOUT", Duration::from_secs(5))?,
            payments_per_minute: env.or("PAYMENT_RATE_LIMIT", NonZeroU32::new(30).expect("30 > 0"))?,
        })
    }
}

pub type AppState = common::http::AppState<Inner>;

pub struct Inner {
    /// The pool of the `payments` schema.
    pub db: PgPool,
    /// The order service, behind its circuit breaker.
    pub orders: Orders,
    /// The card provider.
    pub provider: Arc<dyn Provider>,
    /// In front of the provider's charges, with the policy of the breakers in front of the
    /// other services: while the provider keeps failing, payments are answered `502` at
    /// once, with nothing sent and nothing charged, instead of each waiting out its retries.
    pub provider_breaker: Breaker,
    pub provider_timeout: Duration,
    /// How long a request may work on a charge attempt before the reconciler or a retry
    /// may take it over: every provider call it makes, with their backoff.
    pub attempt_lease: Duration,
    /// Payments per customer.
    pub payment_limiter: Limiter,
    /// The process's request tasks: a charge under way is finished in one of them if its
    /// request is ended early (`REQUEST_TIMEOUT`), so shutdown still waits for it.
    pub requests: TaskTracker,
}

/// The payment service's skeleton: its state, routes, and the order-events consumer and
/// jobs beside them.
impl common::service::Spec for Config {
    // Every statement goes by key (an order's, a payment's, a customer's): planned once.
    const ID: Identity = Identity::new(SERVICE, "payment-service", SCHEMA, &MIGRATOR, DEFAULT_PORT).generic_plans();
    type State = AppState;

    fn configure(common: CommonConfig, env: &Env) -> Result<Self, ConfigError> {
        Self::with_common(common, env, DEFAULT_ORDER_SERVICE_URL)
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    async fn state(&self, shared: &Shared, db: PgPool) -> anyhow::Result<AppState> {
        let upstream = shared.upstream("order", &self.order_service_url, SERVICE, self.upstream_timeout);
        let inner = Inner {
            provider: Arc::new(Simulated { db: db.clone() }),
            db,
            orders: Orders::new(upstream),
            provider_breaker: common::client::breaker(),
            provider_timeout: self.provider_timeout,
            attempt_lease: self.provider_timeout * 4 + Duration::from_secs(1),
            payment_limiter: shared.limiter("payment", self.payments_per_minute, Duration::from_secs(60)),
            requests: shared.requests.clone(),
        };
        Ok(AppState::new(shared.auth.clone(), inner))
    }
    fn routes() -> OpenApiRouter<AppState> {
        http::routes()
    }
    async fn workers(&self, shared: &Shared, state: &AppState, db: &PgPool) -> anyhow::Result<()> {
        let handler = Arc::new(events::OrderEvents { state: state.clone() });
        common::service::consume(self, shared, db, common::contracts::topic::ORDER, handler).await;
        shared.workers.spawn(jobs::run(state.clone()));
        Ok(())
    }
}
