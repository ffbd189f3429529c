//! The order service on its own: `order-service` migrates (unless told not to) and serves
//! until SIGTERM; `order-service migrate` only migrates; `order-service dlq replay TOPIC`
//! puts the dead letters of `TOPIC.dlq` back on their topics.

use common::config::{Command, Env};
use common::http::Shared;

const USAGE: &str = "usage: order-service [migrate | dlq replay TOPIC]\n\n  (no command)  migrate (unless MIGRATE_ON_START=false) and serve\n  migrate       apply the schema's migrations and exit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args(USAGE, false);
    let config = order::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("order-service: {err}");
        std::process::exit(2);
    });
    let _telemetry = common::telemetry::init_tracing(&config.common, "order-service");
    if let Command::DlqReplay(topic) = &command {
        return common::events::kafka::replay_command(&config.common, topic).await;
    }
    if command == Command::Migrate {
        return order::migrate(&config.common.database_url).await;
    }
    if let Err(err) = config.common.require_shared_infrastructure() {
        eprintln!("order-service: {err}");
        std::process::exit(2);
    }
    let shared = Shared::connect(&config.common).await?;
    let service = order::start(&config, &shared).await?;
    common::http::run(&config.common, vec![service], shared).await
}
