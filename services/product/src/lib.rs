//! The product service: the catalogue, its search, and the stock that orders reserve.
//!
//! - [`domain`]: valid names, SKUs, prices and stock; listing order and cursors;
//!   reservation lines and states;
//! - [`repository`]: the SQL of the `catalog` schema, where stock is guarded;
//! - [`cache`]: cache-aside for products and listing pages that a write never leaves stale;
//! - [`catalog`]: catalogue writes, each committed with its event, then told to the cache;
//! - [`http`]: the handlers of `/api/products/*`, `/api/categories/*`,
//!   `/internal/reservations` and `/internal/products`;
//! - [`events`]: orders paid, cancelled or expired settle their reservations;
//! - [`seed`]: generated catalogues for demos and load tests.

pub mod cache;
pub mod catalog;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod repository;
pub mod seed;

use std::sync::Arc;

use common::config::{CommonConfig, ConfigError, Env};
use common::db::{self, Schema};
use common::events::Subscription;
use common::http::{Service, Shared};
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::cache::CatalogCache;

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

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self { common: CommonConfig::from_env(env, DEFAULT_PORT)? })
    }
}

pub type AppState = common::http::AppState<Inner>;

pub struct Inner {
    /// The pool of the `catalog` schema.
    pub db: PgPool,
    /// Products and listing pages through the cache.
    pub catalog: CatalogCache,
}

/// The service as a binary of its own (`product-service`): `common::service::main` runs it.
impl common::service::Binary for Config {
    const NAME: &'static str = "product-service";
    const SEEDS: bool = true;

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::from_env(env)
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    async fn migrate(&self) -> anyhow::Result<()> {
        migrate(&self.common.database_url).await
    }
    async fn start(&self, shared: &Shared) -> anyhow::Result<Service> {
        start(self, shared).await
    }
    async fn seed(&self, count: usize) -> anyhow::Result<()> {
        seed::seed(&connect(self).await?, count, true).await?;
        println!("seeded {count} products");
        Ok(())
    }
}

pub async fn migrate(database_url: &SecretString) -> anyhow::Result<()> {
    db::migrate(database_url, SCHEMA, &MIGRATOR).await
}

/// A pool of the `catalog` schema, for tools such as the seeder.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    db::connect(&config.common.database_url, SCHEMA, config.common.db_max_connections).await
}

/// Migrates, connects, starts the outbox relay and the order-events consumer, and
/// returns the service.
pub async fn start(config: &Config, shared: &Shared) -> anyhow::Result<Service> {
    db::prepare(&config.common, SCHEMA, &MIGRATOR).await?;
    let db = connect(config).await?;
    let catalog = CatalogCache::new(shared.cache.clone(), db.clone());
    let state = AppState::new(shared.auth.clone(), Inner { db: db.clone(), catalog: catalog.clone() });
    shared.events.ensure_topics(&[TOPIC.to_owned()]).await;
    shared.events.spawn_relay(SERVICE, db.clone());
    shared
        .events
        .subscribe(Subscription {
            group: SERVICE.to_owned(),
            topics: vec![common::contracts::topic::ORDER.to_owned()],
            db: db.clone(),
            handler: Arc::new(events::OrderEvents { catalog, db: db.clone() }),
        })
        .await;
    common::events::spawn_inbox_pruning(SERVICE, db.clone(), config.common.inbox_retention);
    let (router, openapi) = http::routes().split_for_parts();
    Ok(Service { name: SERVICE, router: router.with_state(state), openapi, db })
}
