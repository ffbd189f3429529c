//! One service as a binary of its own: each service describes itself once ([`Binary`])
//! and [`main`] runs it, so every `*-service` binary reads its command line and
//! environment, refuses unsafe settings and serves the same way.
//!
//! The commands: none (migrate unless `MIGRATE_ON_START=false`, and serve until SIGTERM),
//! `migrate` (apply the schema's migrations and exit), `dlq replay TOPIC` (put the dead
//! letters of `TOPIC.dlq` back on their topics), and `seed --products N` where the
//! service has something to seed.

use std::future::Future;

use crate::config::{Command, CommonConfig, ConfigError, Env};
use crate::http::{Service, Shared};

/// What a service tells its binary, implemented by its configuration.
pub trait Binary: Sized {
    /// The binary's name, as usage lines, errors and telemetry give it: `order-service`.
    const NAME: &'static str;
    /// Whether it has `seed --products N` ([`Binary::seed`]).
    const SEEDS: bool = false;

    /// The service's configuration from the environment.
    fn from_env(env: &Env) -> Result<Self, ConfigError>;
    /// The part every service has.
    fn common(&self) -> &CommonConfig;
    /// Applies the schema's migrations.
    fn migrate(&self) -> impl Future<Output = anyhow::Result<()>>;
    /// Connects, starts the service's background work and returns its routes.
    fn start(&self, shared: &Shared) -> impl Future<Output = anyhow::Result<Service>>;
    /// Adds `count` generated records, once migrated (only called when [`Binary::SEEDS`]).
    fn seed(&self, count: usize) -> impl Future<Output = anyhow::Result<()>> {
        let _ = count;
        async { anyhow::bail!("this service has nothing to seed") }
    }
}

/// The usage text of `B`'s binary (the commands every binary has are added by
/// [`Command::from_args`]).
fn usage<B: Binary>() -> String {
    let name = B::NAME;
    let seed = if B::SEEDS { " | seed --products N" } else { "" };
    let mut usage = format!(
        "usage: {name} [migrate{seed} | dlq replay TOPIC]\n\n  (no command)       migrate (unless MIGRATE_ON_START=false) and serve\n  migrate            apply the schema's migrations and exit"
    );
    if B::SEEDS {
        usage.push_str("\n  seed --products N  migrate, then add N generated products to the catalogue");
    }
    usage
}

/// Runs the binary of `B`: reads the command, then does it. A configuration error is
/// printed and ends the process with status 2, before anything is connected.
pub async fn main<B: Binary>() -> anyhow::Result<()> {
    let command = Command::from_args(&usage::<B>(), B::SEEDS);
    let config = B::from_env(&Env::from_process()).unwrap_or_else(|err| refuse(B::NAME, err));
    let common = config.common();
    let _telemetry = crate::telemetry::init_tracing(common, B::NAME);
    match command {
        Command::DlqReplay(topic) => crate::events::kafka::replay_command(common, &topic).await,
        Command::Migrate => config.migrate().await,
        Command::Seed(count) => {
            config.migrate().await?;
            config.seed(count).await
        }
        Command::Serve => {
            if let Err(err) = common.require_shared_infrastructure() {
                refuse(B::NAME, err);
            }
            let shared = Shared::connect(common).await?;
            let service = config.start(&shared).await?;
            crate::http::run(common, vec![service], shared).await
        }
    }
}

/// Ends the process over a setting it cannot run with.
fn refuse(name: &str, err: impl std::fmt::Display) -> ! {
    eprintln!("{name}: {err}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of a binary that seeds or not.
    struct Fake<const SEEDS: bool>(CommonConfig);

    impl<const SEEDS: bool> Binary for Fake<SEEDS> {
        const NAME: &'static str = "fake-service";
        const SEEDS: bool = SEEDS;

        fn from_env(env: &Env) -> Result<Self, ConfigError> {
            CommonConfig::from_env(env, 8080).map(Self)
        }
        fn common(&self) -> &CommonConfig {
            &self.0
        }
        async fn migrate(&self) -> anyhow::Result<()> {
            Ok(())
        }
        async fn start(&self, _: &Shared) -> anyhow::Result<Service> {
            anyhow::bail!("not started in a test")
        }
    }

    #[test]
    fn the_usage_names_the_binary_and_offers_seed_only_where_there_is_one() {
        let seeds = usage::<Fake<true>>();
        assert!(seeds.starts_with("usage: fake-service [migrate | seed --products N | dlq replay TOPIC]"), "{seeds}");
        assert!(seeds.contains("\n  seed --products N  migrate, then add N generated products"), "{seeds}");
        let plain = usage::<Fake<false>>();
        assert!(plain.starts_with("usage: fake-service [migrate | dlq replay TOPIC]"), "{plain}");
        assert!(!plain.contains("seed"), "{plain}");
    }
}
