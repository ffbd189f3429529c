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
        Self::spawn_at(SocketAddr::from(([127, 0, 0, 1], 0)), app).await
    }

    /// Serves on a given address: a fixed port, to bring a server back where its clients
    /// expect it after [`TestServer::shutdown`].
    pub async fn spawn_at(addr: SocketAddr, app: Router) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the address");
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

/// A free TCP port on the loopback interface, for a process a test starts. The port is
/// free only until someone binds it, so it is taken from below the kernel's ephemeral
/// range (which `bind(0)` and outgoing connections draw from, so no in-process server of
/// another test can be handed it meanwhile), and claimed (a file under the temporary
/// directory) so that no other test process of the same run is handed it either; claims
/// older than an hour are an earlier run's.
pub fn free_port() -> u16 {
    let claims = std::env::temp_dir().join("shop-test-ports");
    let _ = std::fs::create_dir_all(&claims);
    let (low, high) = unassigned_ports();
    loop {
        let candidate = low + (Uuid::new_v4().as_u128() % u128::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_err() {
            continue;
        }
        let claim = claims.join(candidate.to_string());
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(3600)));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(_) => return candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // No claims possible (a read-only temporary directory): the port as it is.
            Err(_) => return candidate,
        }
    }
}

/// Ports the kernel never hands out by itself: from 10000 up to its ephemeral range
/// (`ip_local_port_range`, 32768 by default).
fn unassigned_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10000, ephemeral_low.max(11000))
}

/// Whether process `pid` holds the socket listening on TCP `port` (Linux's `/proc`): a
/// readiness probe may otherwise be answered by another process on a port that this one
/// failed to bind.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode
            if let [_, local, _, "0A", _, _, _, _, _, inode, ..] = fields[..]
                && local.ends_with(&suffix)
            {
                sockets.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// A Kafka-protocol broker of one test's own (`tansu`, in memory), so a test can stop and
/// restart it without disturbing the others. The binary is `$TANSU` or `tansu` on `PATH`.
#[derive(Debug)]
pub struct TestBroker {
    port: u16,
    child: Option<std::process::Child>,
}

impl TestBroker {
    /// A running broker.
    pub async fn start() -> Self {
        let mut broker = Self::reserve();
        broker.resume().await;
        broker
    }

    /// An address for a broker that is not running yet.
    pub fn reserve() -> Self {
        Self { port: free_port(), child: None }
    }

    /// `bootstrap.servers` for this broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, empty: it keeps nothing across a restart).
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let binary = std::env::var("TANSU").unwrap_or_else(|_| "tansu".to_owned());
        let child = std::process::Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install it with ./scripts/test): {e}"));
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the test broker did not start listening on {}", self.port);
    }

    /// Freezes (`true`) or thaws the broker: while frozen it holds every connection open
    /// and answers nothing, as a broker that hangs or is cut off by the network does, and
    /// it keeps everything it has.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("a running broker");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let sent = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} the broker");
    }

    /// Kills the broker at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub headers: std::collections::HashMap<String, String>,
    pub value: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("a JSON record")
    }
}

/// Reads `topic` from the beginning with a fresh consumer group until `expected` records
/// have arrived (or `wait` has passed), then for a short while longer to catch extras.
pub async fn read_topic(brokers: &str, topic: &str, expected: usize, wait: std::time::Duration) -> Vec<Record> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("a test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let until = if records.len() >= expected {
            tokio::time::Instant::now() + std::time::Duration::from_millis(500)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(message)) => records.push(Record {
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                value: message.payload().unwrap_or_default().to_vec(),
                partition: message.partition(),
                offset: message.offset(),
            }),
            Ok(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(_) => return records,
        }
    }
}

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

impl TestServer {
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None, token).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(body), token).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::PATCH, path, Some(body), token).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None, token).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request sent")
    }
}

/// The problem body of an error response, checked to be problem+json, with the
/// per-request `request_id` checked against `X-Request-Id` and removed so the rest can be
/// pinned.
pub async fn problem(res: reqwest::Response) -> serde_json::Value {
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("content-type").as_deref(), Some("application/problem+json"), "status {}", res.status());
    let request_id = header("x-request-id");
    let mut body: serde_json::Value = res.json().await.expect("a JSON problem");
    let id = body.as_object_mut().expect("an object").remove("request_id");
    assert_eq!(id.and_then(|v| v.as_str().map(str::to_owned)), request_id, "request_id matches X-Request-Id");
    body
}

/// The pinned shape of a problem with no `errors`.
pub fn expected(status: u16, code: &str, title: &str, detail: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": format!("https://errors.shop.example/{code}"),
        "title": title,
        "status": status,
        "code": code,
    });
    if let Some(detail) = detail {
        body["detail"] = serde_json::json!(detail);
    }
    body
}

/// The pinned shape of a 422 with the given field errors.
pub fn validation(errors: serde_json::Value) -> serde_json::Value {
    let mut body =
        expected(422, "validation_failed", "Validation failed", Some("the request has invalid fields; see `errors`"));
    body["errors"] = errors;
    body
}

/// A Redis server of one test's own, so the test can take it away (and bring it back,
/// empty, on the same port).
#[derive(Debug)]
pub struct TestRedis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl TestRedis {
    pub async fn start() -> Self {
        let mut redis = Self { child: None, port: free_port() };
        redis.resume().await;
        redis
    }

    /// Starts the server (again): it keeps nothing across a restart.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "Redis is already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the test Redis did not start listening on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
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
