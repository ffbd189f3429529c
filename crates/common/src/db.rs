//! PostgreSQL: one database, one schema and one role per service.
//!
//! Each service's pool connects with the configured URL, then `SET ROLE`s to the
//! service's own role and puts its schema first on the `search_path`, so a service can
//! only touch its own tables even when, in development, every service shares the
//! superuser URL. In production each service's URL names its own role (and can point
//! at its own database) and the same code runs unchanged.
//!
//! Migrations live in `migrations/<service>/` and keep their history in the service's
//! schema (`<schema>._sqlx_migrations`), so services migrate independently. The tables
//! every schema needs alike (the events outbox and inbox) live once, in
//! `migrations/common/`, and are merged into each service's migrations.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

/// Which schema and role a service owns.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub name: &'static str,
    pub role: &'static str,
}

fn options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    // sqlx's parse errors quote the URL; keep the password out of the message.
    PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL"))
}

/// Creates the database named in `url` if it does not exist yet (the first run of `shop`
/// on a fresh PostgreSQL).
pub async fn ensure_database(url: &SecretString) -> anyhow::Result<()> {
    let target = options(url)?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    let mut conn = target.clone().database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match conn.execute(format!(r#"CREATE DATABASE "{quoted}""#).as_str()).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Someone else created it between our check and our CREATE: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// The migrations every schema gets (numbered from 10000 so they never collide with a
/// service's own).
static COMMON_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/common");

/// A fixed list of migrations, for [`Migrator::new`].
#[derive(Debug)]
struct Merged(Vec<Migration>);

impl MigrationSource<'static> for Merged {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// The service's migrations and the common ones, in order.
fn merged(service: &Migrator) -> Vec<Migration> {
    let mut migrations: Vec<Migration> = service.iter().chain(COMMON_MIGRATOR.iter()).cloned().collect();
    migrations.sort_by_key(|m| m.version);
    migrations
}

/// Makes the schema ready for this version of the service: migrates it (the default), or
/// with `MIGRATE_ON_START=false` waits until a migration job has (Kubernetes runs one per
/// rollout, so that replicas never race to change a schema).
pub async fn prepare(config: &crate::config::CommonConfig, schema: Schema, service: &Migrator) -> anyhow::Result<()> {
    if config.migrate_on_start {
        migrate(&config.database_url, schema, service).await
    } else {
        await_migrations(&config.database_url, schema, service).await
    }
}

/// Creates the service's role and schema if missing and applies its migrations (and the
/// common ones) as that role, so the service owns its tables.
pub async fn migrate(url: &SecretString, schema: Schema, service: &Migrator) -> anyhow::Result<()> {
    let migrator = Migrator::new(Merged(merged(service))).await?;
    let mut conn = options(url)?.connect().await?;
    // Roles are cluster-wide, so parallel test databases race to create them; the
    // handler makes "someone else did it first" a success.
    conn.execute(
        format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} NOLOGIN;
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$;",
            role = schema.role
        )
        .as_str(),
    )
    .await?;
    conn.execute(
        format!(
            "DO $$ BEGIN
               CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {role};
             EXCEPTION WHEN duplicate_schema OR unique_violation THEN NULL;
             END $$;",
            name = schema.name,
            role = schema.role
        )
        .as_str(),
    )
    .await?;
    enter(&mut conn, schema, Plans::Chosen).await?;
    migrator.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Waits until the schema carries every migration this binary knows, checking every two
/// seconds (a startup probe bounds how long). Extra newer ones are fine: migrations only
/// add. Every version is checked, not just the newest: the common migrations are numbered
/// above the services' own.
pub async fn await_migrations(url: &SecretString, schema: Schema, service: &Migrator) -> anyhow::Result<()> {
    let known: Vec<i64> = merged(service).iter().map(|m| m.version).collect();
    let mut reported = false;
    loop {
        match applied_versions(url, schema).await {
            Ok(applied) => {
                let missing: Vec<i64> = known.iter().copied().filter(|v| !applied.contains(v)).collect();
                if missing.is_empty() {
                    return Ok(());
                }
                if !reported {
                    tracing::info!(schema = schema.name, ?missing, "waiting for the migration job");
                    reported = true;
                }
            }
            Err(err) => tracing::warn!(schema = schema.name, error = %err, "cannot read the schema's migrations yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The migrations applied to the schema successfully (none before the first).
async fn applied_versions(url: &SecretString, schema: Schema) -> anyhow::Result<Vec<i64>> {
    let mut conn = options(url)?.connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{}._sqlx_migrations", schema.name))
        .fetch_one(&mut conn)
        .await?;
    let versions = if exists {
        sqlx::query_scalar(&format!("SELECT version FROM {}._sqlx_migrations WHERE success", schema.name))
            .fetch_all(&mut conn)
            .await?
    } else {
        Vec::new()
    };
    conn.close().await?;
    Ok(versions)
}

async fn enter(conn: &mut PgConnection, schema: Schema, plans: Plans) -> Result<(), sqlx::Error> {
    let plan_cache_mode = match plans {
        Plans::Chosen => "auto",
        Plans::Generic => "force_generic_plan",
    };
    let set = format!(
        "SET ROLE {}; SET search_path TO {}; SET plan_cache_mode = {plan_cache_mode}",
        schema.role, schema.name
    );
    conn.execute(set.as_str()).await?;
    Ok(())
}

/// How a pool's prepared statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plans {
    /// As PostgreSQL chooses: a plan for the values at hand while it expects that to pay
    /// (a search, a price range), else one plan for every value.
    #[default]
    Chosen,
    /// One plan for every value, made once a connection: for a schema whose statements
    /// all go by key. Statements taking arrays (the lines of an order) are otherwise
    /// planned again on every call, because a plan for the array at hand always looks
    /// cheaper, and planning them cost more than running them.
    Generic,
}

/// A pooled connection idle this long is checked before it is handed out.
const IDLE_PING_AFTER: Duration = Duration::from_secs(10);

/// The service's pool: every connection is in the service's role and schema.
pub async fn connect(url: &SecretString, schema: Schema, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_planned(url, schema, max_connections, Plans::Chosen).await
}

/// [`connect`], with the statements planned as `plans` says.
pub async fn connect_planned(
    url: &SecretString,
    schema: Schema,
    max_connections: u32,
    plans: Plans,
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .after_connect(move |conn, _meta| Box::pin(async move { enter(conn, schema, plans).await }))
        // A connection in steady use is not pinged before each checkout (a round trip on
        // every request's path); one that sat idle is, since the server may have dropped it.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_PING_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options(url)?)
        .await?;
    Ok(pool)
}

/// Publishes the pool's connection counts as gauges (called when metrics are scraped).
pub fn record_pool_metrics(service: &'static str, pool: &PgPool) {
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    metrics::gauge!("db_pool_connections", "service" => service, "state" => "idle").set(idle);
    metrics::gauge!("db_pool_connections", "service" => service, "state" => "in_use").set(size - idle);
    metrics::gauge!("db_pool_max_connections", "service" => service)
        .set(f64::from(pool.options().get_max_connections()));
}

/// An error of the connection to the database (it is away or overloaded) rather than of
/// the statement: worth retrying, and a 503 rather than a 500 for a client.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
        )
    })
}

/// `true` when `err` is a violation of the named unique constraint (or unique index),
/// so repositories can turn it into a specific API error without string matching.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(e) => e.is_unique_violation() && e.constraint() == Some(constraint),
        _ => false,
    }
}

/// `true` when PostgreSQL ended the transaction to break a deadlock (`40P01`): nothing of
/// it was kept, and running it again is safe.
pub fn is_deadlock(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.code().as_deref() == Some("40P01"))
}
