//! The user service on its own: `user-service` migrates (unless told not to) and serves
//! until SIGTERM; `user-service migrate` only migrates; `user-service dlq replay TOPIC`
//! puts the dead letters of `TOPIC.dlq` back on their topics.

use common::config::{Command, Env};
use common::http::Shared;

const USAGE: &str = "usage: user-service [migrate | dlq replay TOPIC]\n\n  (no command)  migrate (unless MIGRATE_ON_START=false) and serve\n  migrate       apply the schema's migrations and exit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::from_args(USAGE, false);
    let config = user::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("user-service: {err}");
        std::process::exit(2);
    });
    let _telemetry = common::telemetry::init_tracing(&config.common, "user-service");
    if let Command::DlqReplay(topic) = &command {
        return common::events::kafka::replay_command(&config.common, topic).await;
    }
    if command == Command::Migrate {
        return user::migrate(&config.common.database_url).await;
    }
    if let Err(err) = config.common.require_shared_infrastructure() {
        eprintln!("user-service: {err}");
        std::process::exit(2);
    }
    let shared = Shared::connect(&config.common).await?;
    let service = user::start(&config, &shared).await?;
    common::http::run(&config.common, vec![service], shared).await
}
