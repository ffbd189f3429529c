//! The payment service on its own: `payment-service` migrates (unless told not to) and serves
//! until SIGTERM; `payment-service migrate` only migrates; `payment-service dlq replay TOPIC`
//! puts the dead letters of `TOPIC.dlq` back on their topics.

use common::config::{Command, Env};
use common::http::Shared;

const USAGE: &str = "usage: payment-service [migrate | dlq replay TOPIC]\n\n  (no command)  migrate (unless MIGRATE_ON_START=false) and serve\n  migrate       apply the schema's migrations and exit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args(USAGE, false);
    let config = payment::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("payment-service: {err}");
        std::process::exit(2);
    });
    let _telemetry = common::telemetry::init_tracing(&config.common, "payment-service");
    if let Command::DlqReplay(topic) = &command {
        return common::events::kafka::replay_command(&config.common, topic).await;
    }
    if command == Command::Migrate {
        return payment::migrate(&config.common.database_url).await;
    }
    if let Err(err) = config.common.require_shared_infrastructure() {
        eprintln!("payment-service: {err}");
        std::process::exit(2);
    }
    let shared = Shared::connect(&config.common).await?;
    let service = payment::start(&config, &shared).await?;
    common::http::run(&config.common, vec![service], shared).await
}
