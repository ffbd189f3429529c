//! The payment service on its own.

use common::config::Env;
use common::http::Shared;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = payment::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("payment-service: {err}");
        std::process::exit(2);
    });
    common::telemetry::init_tracing(config.common.app_env);
    if let Err(err) = config.common.require_shared_infrastructure() {
        eprintln!("payment-service: {err}");
        std::process::exit(2);
    }
    let shared = Shared::connect(&config.common).await?;
    let service = payment::start(&config, &shared).await?;
    common::http::run(config.common.port, common::http::app(vec![service], shared)).await
}
