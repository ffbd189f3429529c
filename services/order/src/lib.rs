//! The order service: carts, checkout, the order lifecycle, and live status updates.
//!
//! - [`domain`]: the status machine, quantities, addresses, totals and cursors;
//! - [`repository`]: the SQL of the `ordering` schema, where every move is guarded;
//! - [`steps`]: the business steps the handlers call: placing an order (the first step of
//!   the saga, safe against crashes), changing a cart, moving an order;
//! - [`products`]: what it asks the product service (prices, reservations);
//! - [`http`]: the handlers of `/api/cart/*`, `/api/orders/*` and `/internal/orders/*`;
//! - [`live`]: status changes pushed to WebSocket clients on every replica;
//! - [`events`]: payments that succeed pay their order;
//! - [`jobs`]: expiring unpaid orders and releasing checkouts that died half way.

pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod jobs;
pub mod live;
pub mod products;
pub mod repository;
pub mod steps;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use common::config::{CommonConfig, ConfigError, Env};
use common::db::Schema;
use common::http::Shared;
use common::ratelimit::Limiter;
use common::service::Identity;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

use crate::live::Live;
use crate::products::Products;

pub const SERVICE: &str = "order";
pub const SCHEMA: Schema = Schema { name: "ordering", role: "ordering_svc" };
pub const DEFAULT_PORT: u16 = 8083;
/// Where the product service is when nothing says otherwise.
pub const DEFAULT_PRODUCT_SERVICE_URL: &str = "http://127.0.0.1:8082";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/ordering");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `PRODUCT_SERVICE_URL`: the product service's base URL.
    pub product_service_url: String,
    /// `ORDER_PAYMENT_TIMEOUT` (15m): unpaid orders expire after this.
    pub payment_timeout: Duration,
    /// `UPSTREAM_TIMEOUT` (2s): the longest one call to another service may take.
    pub upstream_timeout: Duration,
    /// `CHECKOUT_RECOVERY_AFTER` (1m): a checkout unfinished this long is released.
    pub checkout_recovery_after: Duration,
    /// `WS_HEARTBEAT` (20s): how often WebSocket clients are pinged.
    pub ws_heartbeat: Duration,
    /// `CHECKOUT_RATE_LIMIT` (30): checkouts a minute per customer.
    pub checkouts_per_minute: NonZeroU32,
}

impl Config {
    /// The order service's variables on top of `common`; `product_default` is where the
    /// product service is unless `PRODUCT_SERVICE_URL` says (in `shop`: the same process).
    pub fn with_common(common: CommonConfig, env: &Env, product_default: &str) -> Result<Self, ConfigError> {
        let product_service_url = common::config::service_url(env, "PRODUCT_SERVICE_URL", product_default)?;
        let upstream_timeout = env.duration("UPSTREAM_TIMEOUT", Duration::from_secs(2))?;
        let checkout_recovery_after = env.duration("CHECKOUT_RECOVERY_AFTER", Duration::from_secs(60))?;
        // A checkout still waiting for its (retried) reservation must not be released
        // under it.
        if checkout_recovery_after < upstream_timeout * 4 {
            return Err(ConfigError::new(
                "CHECKOUT_RECOVERY_AFTER",
                "must be at least four times UPSTREAM_TIMEOUT (a reservation is tried three times)",
            ));
        }
        let payment_timeout = env.duration("ORDER_PAYMENT_TIMEOUT", Duration::from_secs(15 * 60))?;
        if payment_timeout > Duration::from_secs(30 * 24 * 3600) {
            return Err(ConfigError::new("ORDER_PAYMENT_TIMEOUT", "must be at most 30 days"));
        }
        Ok(Self {
            common,
            product_service_url,
            payment_timeout,
            upstream_timeout,
            checkout_recovery_after,
            ws_heartbeat: env.duration("WS_HEARTBEAT", Duration::from_secs(20))?,
            checkouts_per_minute: env.or("CHECKOUT_RATE_LIMIT", NonZeroU32::new(30).expect("30 > 0"))?,
        })
    }
}

pub type AppState = common::http::AppState<Inner>;

pub struct Inner {
    /// The pool of the `ordering` schema.
    pub db: PgPool,
    /// The product service, behind its circuit breaker.
    pub products: Products,
    /// Where status changes go for WebSocket clients.
    pub live: Live,
    pub payment_timeout: Duration,
    /// How long a request may work on a checkout before others may take it over: the
    /// longest a (retried) reservation can take.
    pub checkout_lease: Duration,
    pub ws_heartbeat: Duration,
    /// Checkouts per customer.
    pub checkout_limiter: Limiter,
}

/// The order service's skeleton: its state, routes, and the payment-events consumer and
/// jobs beside them.
impl common::service::Spec for Config {
    // Every statement goes by key (an order's, a payment's, a customer's): planned once.
    const ID: Identity = Identity::new(SERVICE, "order-service", SCHEMA, &MIGRATOR, DEFAULT_PORT).generic_plans();
    type State = AppState;

    fn configure(common: CommonConfig, env: &Env) -> Result<Self, ConfigError> {
        Self::with_common(common, env, DEFAULT_PRODUCT_SERVICE_URL)
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    async fn state(&self, shared: &Shared, db: PgPool) -> anyhow::Result<AppState> {
        let live = match (&self.common.redis_url, &shared.redis) {
            (Some(url), Some(publisher)) => Live::redis(url, publisher.clone(), &shared.redis_prefix)?,
            _ => Live::local(),
        };
        let upstream = shared.upstream("product", &self.product_service_url, SERVICE, self.upstream_timeout);
        let inner = Inner {
            db,
            products: Products::new(upstream),
            live,
            payment_timeout: self.payment_timeout,
            checkout_lease: self.upstream_timeout * 4,
            ws_heartbeat: self.ws_heartbeat,
            checkout_limiter: shared.limiter("checkout", self.checkouts_per_minute, Duration::from_secs(60)),
        };
        Ok(AppState::new(shared.auth.clone(), inner))
    }
    fn routes() -> OpenApiRouter<AppState> {
        http::routes()
    }
    async fn workers(&self, shared: &Shared, state: &AppState, db: &PgPool) -> anyhow::Result<()> {
        let handler = Arc::new(events::PaymentEvents { live: state.live.clone() });
        common::service::consume(self, shared, db, common::contracts::topic::PAYMENT, handler).await;
        shared.workers.spawn(jobs::run(db.clone(), state.live.clone(), self.checkout_recovery_after));
        Ok(())
    }
}
