//! One skeleton for every service. Each service's configuration implements [`Spec`]: its
//! names and schema, its handler `state`, its `routes`, and its `workers` (the consumers
//! and jobs that run beside the handlers, as [`Workers`]). [`Spec::start`] composes them the same way
//! for every service, so `shop`, the tests and each service's own binary ([`main`]) run
//! exactly the same pieces.
//!
//! A binary's commands: none (migrate unless `MIGRATE_ON_START=false`, and serve until
//! SIGTERM), `migrate` (apply the schema's migrations and exit), `dlq replay TOPIC` (put
//! the dead letters of `TOPIC.dlq` back on their topics), and `seed --products N` where
//! the service has something to seed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Command, CommonConfig, ConfigError, Env};
use crate::db::{self, Schema};
use crate::events::{self, EventHandler, Subscription};
use crate::http::{Service, Shared};

/// Who a service is, for the skeleton: its names, its schema and migrations, and how it is
/// served. One constant per service ([`Spec::ID`]).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The service's name: its consumer group, its relay's and its metrics' label (`order`).
    pub name: &'static str,
    /// Its binary's name, as usage lines, errors and telemetry give it (`order-service`).
    pub binary: &'static str,
    /// The schema it owns, and the role that owns it.
    pub schema: Schema,
    /// Its migrations.
    pub migrator: &'static Migrator,
    /// The port it listens on unless `PORT` says.
    pub port: u16,
    /// How its statements are planned ([`db::Plans`]).
    pub plans: db::Plans,
    /// Whether it has `seed --products N` ([`Spec::seed`]).
    pub seeds: bool,
}

impl Identity {
    /// A service whose statements are planned as PostgreSQL chooses, with nothing to seed.
    pub const fn new(
        name: &'static str,
        binary: &'static str,
        schema: Schema,
        migrator: &'static Migrator,
        port: u16,
    ) -> Self {
        Self { name, binary, schema, migrator, port, plans: db::Plans::Chosen, seeds: false }
    }

    /// Its statements are planned once ([`db::Plans::Generic`]).
    pub const fn generic_plans(self) -> Self {
        Self { plans: db::Plans::Generic, ..self }
    }

    /// It has `seed --products N`.
    pub const fn seeding(self) -> Self {
        Self { seeds: true, ..self }
    }
}

/// What a service is made of, implemented by its configuration.
pub trait Spec: Sized + Sync {
    /// Who it is.
    const ID: Identity;
    /// What its handlers share (`common::http::AppState<Inner>`).
    type State: Clone + Send + Sync + 'static;

    /// The service's own variables, on top of the `common` ones.
    fn configure(common: CommonConfig, env: &Env) -> Result<Self, ConfigError>;
    /// The part every service has.
    fn common(&self) -> &CommonConfig;
    /// The handlers' state, over the service's pool.
    fn state(&self, shared: &Shared, db: PgPool) -> impl Future<Output = anyhow::Result<Self::State>> + Send;
    /// Its routes, each with its OpenAPI description.
    fn routes() -> OpenApiRouter<Self::State>;
    /// Starts what runs beside the handlers, through `shared.workers`: consumers
    /// ([`consume`]) and jobs ([`Workers::spawn`]). The outbox relay is started for every
    /// service by [`Spec::start`].
    fn workers(
        &self,
        shared: &Shared,
        state: &Self::State,
        db: &PgPool,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The service's configuration from the environment.
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::configure(CommonConfig::from_env(env, Self::ID.port)?, env)
    }

    /// Adds `count` generated records, once migrated (only called when [`Identity::seeds`]).
    fn seed(&self, count: usize) -> impl Future<Output = anyhow::Result<()>> {
        let _ = count;
        async { anyhow::bail!("this service has nothing to seed") }
    }

    /// The routes over `state`, and their OpenAPI document.
    fn router(state: Self::State) -> (Router, OpenApi) {
        let (router, openapi) = Self::routes().split_for_parts();
        (router.with_state(state), openapi)
    }

    /// Applies the schema's migrations.
    fn migrate(&self) -> impl Future<Output = anyhow::Result<()>> {
        db::migrate(&self.common().database_url, Self::ID.schema, Self::ID.migrator)
    }

    /// A pool of the service's schema, in its role.
    fn connect(&self) -> impl Future<Output = anyhow::Result<PgPool>> {
        let common = self.common();
        db::connect_planned(&common.database_url, Self::ID.schema, common.db_max_connections, Self::ID.plans)
    }

    /// Migrates (unless told not to), connects, builds the state, starts the outbox relay
    /// and the workers, and returns the routes.
    fn start(&self, shared: &Shared) -> impl Future<Output = anyhow::Result<Service>> {
        async move {
            db::prepare(self.common(), Self::ID.schema, Self::ID.migrator).await?;
            let db = self.connect().await?;
            let state = self.state(shared, db.clone()).await?;
            shared.events.ensure_topics(&[events::topic_of(Self::ID.name)]).await;
            shared.workers.adopt(shared.events.spawn_relay(Self::ID.name, db.clone()));
            self.workers(shared, &state, &db).await?;
            let (router, openapi) = Self::router(state);
            Ok(Service { name: Self::ID.name, router, openapi, db })
        }
    }
}

/// Delivers `topic` to `handler` in `S`'s consumer group (each event applied once, by the
/// inbox in `db`), and prunes that inbox as it ages.
pub async fn consume<S: Spec>(config: &S, shared: &Shared, db: &PgPool, topic: &str, handler: Arc<dyn EventHandler>) {
    let subscription =
        Subscription { group: S::ID.name.to_owned(), topics: vec![topic.to_owned()], db: db.clone(), handler };
    if let Some(consumer) = shared.events.subscribe(subscription).await {
        shared.workers.adopt(consumer);
    }
    shared.workers.adopt(events::spawn_inbox_pruning(S::ID.name, db.clone(), config.common().inbox_retention));
}

/// The background work of a process (outbox relays, consumers, jobs), stopped together
/// once the requests in flight are done ([`Workers::stop`]), instead of each being cut off
/// wherever it is when the runtime goes. Every worker is written to survive being cut off
/// (a relay or a consumer resumes from what was committed; a job's next round does what
/// this one did not), so stopping drops them at their next await.
#[derive(Clone, Default)]
pub struct Workers {
    stop: CancellationToken,
    running: TaskTracker,
}

impl Workers {
    /// Runs `work` until it ends or the workers are stopped.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.running.spawn(async move {
            stop.run_until_cancelled(work).await;
        });
    }

    /// A task spawned elsewhere (a relay, a consumer), ended when the workers are stopped.
    pub fn adopt(&self, mut task: JoinHandle<()>) {
        let stop = self.stop.clone();
        self.running.spawn(async move {
            tokio::select! {
                _ = &mut task => {}
                () = stop.cancelled() => {
                    task.abort();
                    let _ = task.await;
                }
            }
        });
    }

    /// Stops every worker: whether all had ended within `grace`.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.running.close();
        tokio::time::timeout(grace, self.running.wait()).await.is_ok()
    }
}

/// The usage text of `B`'s binary (the commands every binary has are added by
/// [`Command::from_args`]).
fn usage<B: Spec>() -> String {
    let name = B::ID.binary;
    let seed = if B::ID.seeds { " | seed --products N" } else { "" };
    let mut usage = format!(
        "usage: {name} [migrate{seed} | dlq replay TOPIC]\n\n  (no command)       migrate (unless MIGRATE_ON_START=false) and serve\n  migrate            apply the schema's migrations and exit"
    );
    if B::ID.seeds {
        usage.push_str("\n  seed --products N  migrate, then add N generated products to the catalogue");
    }
    usage
}

/// Runs the binary of `B`: reads the command, then does it. A configuration error is
/// printed and ends the process with status 2, before anything is connected.
pub async fn main<B: Spec>() -> anyhow::Result<()> {
    let command = Command::from_args(&usage::<B>(), B::ID.seeds);
    let config = B::from_env(&Env::from_process()).unwrap_or_else(|err| refuse(B::ID.binary, err));
    let common = config.common();
    let _telemetry = crate::telemetry::init_tracing(common, B::ID.binary);
    match command {
        Command::DlqReplay(topic) => crate::events::kafka::replay_command(common, &topic).await,
        Command::Migrate => config.migrate().await,
        Command::Seed(count) => {
            config.migrate().await?;
            config.seed(count).await
        }
        Command::Serve => {
            if let Err(err) = common.require_shared_infrastructure() {
                refuse(B::ID.binary, err);
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

    /// The configuration of a service that seeds or not.
    struct Fake<const SEEDS: bool>(CommonConfig);

    static FAKE_MIGRATOR: Migrator = Migrator::DEFAULT;

    impl<const SEEDS: bool> Spec for Fake<SEEDS> {
        const ID: Identity = {
            let id =
                Identity::new("fake", "fake-service", Schema { name: "fake", role: "fake_svc" }, &FAKE_MIGRATOR, 8080);
            if SEEDS { id.seeding() } else { id }
        };
        type State = ();

        fn configure(common: CommonConfig, _: &Env) -> Result<Self, ConfigError> {
            Ok(Self(common))
        }
        fn common(&self) -> &CommonConfig {
            &self.0
        }
        async fn state(&self, _: &Shared, _: PgPool) -> anyhow::Result<()> {
            Ok(())
        }
        fn routes() -> OpenApiRouter<()> {
            OpenApiRouter::new()
        }
        async fn workers(&self, _: &Shared, (): &(), _: &PgPool) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// Sets its flag when dropped: the work it is part of was ended.
    struct Ended(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stopping_the_workers_ends_spawned_and_adopted_work() {
        let workers = Workers::default();
        let (spawned, adopted) = (Arc::default(), Arc::default());
        let (guard, other) = (Ended(Arc::clone(&spawned)), Ended(Arc::clone(&adopted)));
        workers.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        workers.adopt(tokio::spawn(async move {
            let _guard = other;
            std::future::pending::<()>().await;
        }));
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&finished);
        workers.spawn(async move { done.store(true, std::sync::atomic::Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(workers.stop(Duration::from_secs(5)).await, "every worker ended");
        for (what, flag) in [("spawned", &spawned), ("adopted", &adopted), ("finished", &finished)] {
            assert!(flag.load(std::sync::atomic::Ordering::SeqCst), "the {what} work ended");
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
