//! The test harness: each test gets its own fresh PostgreSQL database and its own Redis
//! key prefix, and drives the real application on a real port, so tests run in parallel
//! against the real dependencies without seeing each other's data.

use std::net::SocketAddr;

use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
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

/// The application served on `127.0.0.1:0`, stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn spawn(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::http::serve(listener, app, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().build().expect("a reqwest client");
        Self { addr, client, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the server to shut down gracefully and waits until it has.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
