//! The product service on its own: `product-service` migrates (unless told not to) and
//! serves, `product-service migrate` only migrates, `product-service seed --products N`
//! fills the catalogue, `product-service dlq replay TOPIC` puts the dead letters of
//! `TOPIC.dlq` back on their topics.

use common::config::{Command, Env};
use common::http::Shared;

const USAGE: &str = "usage: product-service [migrate | seed --products N | dlq replay TOPIC]\n\n  (no command)       migrate (unless MIGRATE_ON_START=false) and serve\n  migrate            apply the schema's migrations and exit\n  seed --products N  migrate, then add N generated products to the catalogue";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args(USAGE, true);
    let config = product::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("product-service: {err}");
        std::process::exit(2);
    });
    let _telemetry = common::telemetry::init_tracing(&config.common, "product-service");
    if let Command::DlqReplay(topic) = &command {
        return common::events::kafka::replay_command(&config.common, topic).await;
    }
    if command == Command::Migrate {
        return product::migrate(&config.common.database_url).await;
    }
    if let Command::Seed(count) = command {
        product::migrate(&config.common.database_url).await?;
        let db = product::connect(&config).await?;
        product::seed::seed(&db, count, true).await?;
        println!("seeded {count} products");
        return Ok(());
    }
    if let Err(err) = config.common.require_shared_infrastructure() {
        eprintln!("product-service: {err}");
        std::process::exit(2);
    }
    let shared = Shared::connect(&config.common).await?;
    let service = product::start(&config, &shared).await?;
    common::http::run(&config.common, vec![service], shared).await
}
