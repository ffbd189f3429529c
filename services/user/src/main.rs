//! The user service on its own: read config, start, serve until SIGTERM.

use common::config::Env;
use common::http::Shared;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match user::Config::from_env(&Env::from_process())
        .and_then(|c| c.common.require_shared_infrastructure().map(|()| c))
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("user-service: {err}");
            std::process::exit(2);
        }
    };
    common::telemetry::init_tracing(config.common.app_env);
    let shared = Shared::connect(&config.common).await?;
    let service = user::start(&config, &shared).await?;
    common::http::run(config.common.port, common::http::app(vec![service], shared)).await
}
