//! The product service on its own: `product-service` migrates (unless told not to) and
//! serves, `product-service migrate` only migrates, `product-service seed --products N`
//! fills the catalogue.

use common::config::Env;
use common::http::Shared;

const USAGE: &str = "usage: product-service [migrate | seed --products N]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (migrate_only, seed) = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => (false, None),
        ["migrate"] => (true, None),
        ["seed", "--products", n] => (false, Some(n.parse::<usize>().unwrap_or_else(|_| usage()))),
        _ => usage(),
    };
    let config = product::Config::from_env(&Env::from_process()).unwrap_or_else(|err| {
        eprintln!("product-service: {err}");
        std::process::exit(2);
    });
    common::telemetry::init_tracing(config.common.app_env);
    if migrate_only {
        return product::migrate(&config.common.database_url).await;
    }
    if let Some(count) = seed {
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

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}
