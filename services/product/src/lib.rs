//! The product service: the catalogue, its search, and the stock that orders reserve.
//!
//! - [`domain`]: valid names, SKUs, prices and stock; listing order and cursors;
//!   reservation lines and states;
//! - [`repository`]: the SQL of the `catalog` schema, where stock is guarded;
//! - [`steps`]: the business steps the handlers call: cache-aside reads that a write never
//!   leaves stale, and catalogue writes, each committed with its event, then told to the cache;
//! - [`http`]: the handlers of `/api/products/*`, `/api/categories/*`,
//!   `/internal/reservations` and `/internal/products`;
//! - [`events`]: orders paid, cancelled or expired settle their reservations;
//! - [`seed`]: generated catalogues for demos and load tests.

pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod repository;
pub mod seed;
pub mod steps;

use std::sync::Arc;

use common::config::{CommonConfig, ConfigError, Env};
use common::db::Schema;
use common::http::Shared;
use common::service::Identity;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

use crate::steps::cache::CatalogCache;

pub const SERVICE: &str = "product";
pub const TOPIC: &str = common::contracts::topic::PRODUCT;
pub const SCHEMA: Schema = Schema { name: "catalog", role: "catalog_svc" };
pub const DEFAULT_PORT: u16 = 8082;

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/catalog");

/// The product service reads only the common variables.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

pub type AppState = common::http::AppState<Inner>;

pub struct Inner {
    /// The pool of the `catalog` schema.
    pub db: PgPool,
    /// Products and listing pages through the cache.
    pub catalog: CatalogCache,
}

/// The product service's skeleton: its state, routes, and the order-events consumer that
/// settles reservations.
impl common::service::Spec for Config {
    const ID: Identity = Identity::new(SERVICE, "product-service", SCHEMA, &MIGRATOR, DEFAULT_PORT).seeding();
    type State = AppState;

    fn configure(common: CommonConfig, _: &Env) -> Result<Self, ConfigError> {
        Ok(Self { common })
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    async fn state(&self, shared: &Shared, db: PgPool) -> anyhow::Result<AppState> {
        let catalog = CatalogCache::new(shared.cache.clone(), db.clone());
        Ok(AppState::new(shared.auth.clone(), Inner { db, catalog }))
    }
    fn routes() -> OpenApiRouter<AppState> {
        http::routes()
    }
    async fn workers(&self, shared: &Shared, state: &AppState, db: &PgPool) -> anyhow::Result<()> {
        let handler = Arc::new(events::OrderEvents { catalog: state.catalog.clone(), db: db.clone() });
        common::service::consume(self, shared, db, common::contracts::topic::ORDER, handler).await;
        Ok(())
    }
    async fn seed(&self, count: usize) -> anyhow::Result<()> {
        seed::seed(&self.connect().await?, count, true).await?;
        println!("seeded {count} products");
        Ok(())
    }
}
