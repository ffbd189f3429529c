//! `shop`: the whole platform in one process on one port.
//!
//! - `shop` creates the database if it is missing, migrates every schema and serves
//!   every service's routes on `PORT` (default 8080);
//! - the storefront (`storefront/`) is served at `/`;
//! - `shop migrate` only creates the database and migrates;
//! - `shop dlq replay TOPIC` puts the dead letters of `TOPIC.dlq` back on their topics.
//!
//! With no `REDIS_URL` the cache, revocations, rate limits and WebSocket fan-out live
//! in-process; with no `KAFKA_BROKERS` events go to the other services in-process.

mod storefront;

/// Every binary of ours allocates with mimalloc: request handling is allocation-heavy, and
/// glibc's malloc showed up as a tenth of the profile of a cached product read. Built with
/// `no_thp`: its eagerly committed arena, backed by transparent huge pages, held about
/// 10 MiB per idle process. A library does not choose its users' allocator, so each
/// binary declares it (tests run on the system's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::config::{Command, CommonConfig, ConfigError, Env};
use common::http::Shared;
use common::service::Spec as _;

const USAGE: &str = "usage: shop [migrate | seed --products N | dlq replay TOPIC]\n\n  (no command)          create the database if missing, migrate, and serve the whole API\n  migrate               create the database if missing and apply every migration\n  seed --products N     migrate, then add N generated products to the catalogue";

/// The default port of the all-in-one binary.
const DEFAULT_PORT: u16 = 8080;

struct Config {
    common: CommonConfig,
    user: user::Config,
    product: product::Config,
    order: order::Config,
    payment: payment::Config,
}

fn config(env: &Env) -> Result<Config, ConfigError> {
    let common = CommonConfig::from_env(env, DEFAULT_PORT)?;
    // The order service calls the product service, and the payment service the order
    // service: both are this very process.
    let itself = format!("http://127.0.0.1:{}", common.port);
    Ok(Config {
        user: user::Config::configure(common.clone(), env)?,
        product: product::Config::configure(common.clone(), env)?,
        order: order::Config::with_common(common.clone(), env, &itself)?,
        payment: payment::Config::with_common(common.clone(), env, &itself)?,
        common,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args(USAGE, true);
    let config = config(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("shop: {err}");
        std::process::exit(2);
    });
    let _telemetry = common::telemetry::init_tracing(&config.common, "shop");
    if !matches!(command, Command::DlqReplay(_)) {
        // Every other command works on the database, which may not exist yet.
        common::db::ensure_database(&config.common.database_url).await?;
    }
    match command {
        Command::DlqReplay(topic) => common::events::kafka::replay_command(&config.common, &topic).await,
        Command::Migrate => {
            migrate(&config).await?;
            tracing::info!("every schema is migrated");
            Ok(())
        }
        Command::Seed(count) => {
            migrate(&config).await?;
            config.product.seed(count).await
        }
        Command::Serve => {
            let shared = Shared::connect(&config.common).await?;
            if config.common.redis_url.is_none() {
                tracing::info!("REDIS_URL is not set: cache, revocations and rate limits are in-process");
            }
            let mut user = config.user.start(&shared).await?;
            // The storefront rides on the first router: it has no state of its own.
            user.router = user.router.merge(storefront::router());
            let services = vec![
                user,
                config.product.start(&shared).await?,
                config.order.start(&shared).await?,
                config.payment.start(&shared).await?,
            ];
            common::http::run(&config.common, services, shared).await
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    config.user.migrate().await?;
    config.product.migrate().await?;
    config.order.migrate().await?;
    config.payment.migrate().await
}
