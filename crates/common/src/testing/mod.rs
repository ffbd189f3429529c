//! The test harness: each test gets its own fresh PostgreSQL database and its own Redis
//! key prefix, and drives the real application on a real port, so tests run in parallel
//! against the real dependencies without seeing each other's data.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection, Executor};
use uuid::Uuid;

/// The server the test databases are created on (`TEST_DATABASE_URL`, without a
/// database name; default: the local PostgreSQL as `postgres`).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The Redis the tests use (`TEST_REDIS_URL`; default: the local one).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique Redis key prefix for one test.
pub fn redis_prefix() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

/// A database that exists for one test and is dropped when the test ends, pass or fail.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: SecretString,
}

fn admin_options() -> sqlx::postgres::PgConnectOptions {
    format!("{}/postgres", server_url()).parse().expect("TEST_DATABASE_URL is a PostgreSQL URL")
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("shoptest_{}", Uuid::new_v4().simple());
        let mut conn = admin_options().connect().await.expect("the test PostgreSQL is reachable");
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("CREATE DATABASE");
        conn.close().await.ok();
        let url = SecretString::from(format!("{}/{name}", server_url()));
        Self { name, url }
    }

    /// A name for a database that does not exist yet (to test creating it); dropped
    /// like any other if it comes to exist.
    pub fn reserve() -> Self {
        let name = format!("shoptest_{}", Uuid::new_v4().simple());
        let url = SecretString::from(format!("{}/{name}", server_url()));
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }

    /// A database outage and its end, as the services see them: with `false`, new
    /// connections are refused and the open ones closed; with `true`, connections work again.
    pub async fn set_reachable(&self, reachable: bool) {
        let mut conn = admin_options().connect().await.expect("the test PostgreSQL is reachable");
        let name = &self.name;
        conn.execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {reachable}").as_str())
            .await
            .expect("ALTER DATABASE");
        if !reachable {
            conn.execute(
                format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str(),
            )
            .await
            .expect("closing the database's connections");
        }
        conn.close().await.ok();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread can, even while the
        // test's runtime is unwinding from a failed assertion.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = admin_options().connect().await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                conn.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

mod deps;
mod server;
mod services;

pub use self::deps::*;
pub use self::server::*;
pub use self::services::*;

/// The variables every test app starts with: its own database and Redis prefix, a fresh
/// JWT secret, a cheap bcrypt cost and a small pool.
pub fn base_vars(db: &TestDb) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.url().to_owned()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_PREFIX".into(), redis_prefix()),
        ("BCRYPT_COST".into(), "4".into()),
        ("JWT_SECRET".into(), format!("test-secret-{}", Uuid::new_v4())),
        ("DB_MAX_CONNECTIONS".into(), "5".into()),
        // Tests that count on a rate limit set it; the others may send as they like.
        ("LOGIN_ADDRESS_RATE_LIMIT".into(), "100000".into()),
        ("REGISTRATION_RATE_LIMIT".into(), "100000".into()),
        ("CHECKOUT_RATE_LIMIT".into(), "100000".into()),
        ("PAYMENT_RATE_LIMIT".into(), "100000".into()),
    ]
}

/// `vars` with `overrides` replacing or adding entries.
pub fn with_overrides(mut vars: Vec<(String, String)>, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in overrides {
        vars.retain(|(name, _)| name != k);
        vars.push(((*k).into(), (*v).into()));
    }
    vars
}

/// Waits until `check` holds (events are applied asynchronously), or fails after 10 s
/// naming `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Installs, once per test binary, a global subscriber that sends every span at `info`
/// and above to an in-memory OpenTelemetry exporter, and returns the exporter: what the
/// binaries export over OTLP, for a test to read.
pub fn spans() -> &'static opentelemetry_sdk::trace::InMemorySpanExporter {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    static EXPORTER: std::sync::OnceLock<opentelemetry_sdk::trace::InMemorySpanExporter> = std::sync::OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        // Exported as each span ends: nothing to flush. The provider lives in the layer.
        let provider =
            opentelemetry_sdk::trace::SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        tracing_subscriber::registry().with(layer).try_init().expect("no other global subscriber in this test binary");
        crate::trace::set_mode(crate::trace::Mode::OpenTelemetry);
        exporter
    })
}
