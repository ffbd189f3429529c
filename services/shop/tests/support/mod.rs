//! The four service binaries as processes, as the saga and shutdown tests run them: each
//! on its own port, with tansu, Redis and PostgreSQL, restartable, killable (`kill -9`)
//! and terminable (SIGTERM).
//!
//! The service binaries are built next to `shop` by `cargo test --workspace` (each service
//! package has tests of its own, which makes cargo build its binary).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::testing::{TestBroker, TestDb, free_port, listens_on, redis_prefix, redis_url};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

mod audit;
mod slow_link;

#[allow(unused_imports)] // not every test binary audits, or slows a link
pub use self::audit::*;
#[allow(unused_imports)]
pub use self::slow_link::*;

pub const SERVICES: [&str; 4] = ["user", "product", "order", "payment"];

/// One service process, restartable on its port.
pub struct Process {
    pub name: &'static str,
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub log: PathBuf,
}

fn binary(name: &str) -> PathBuf {
    let shop = PathBuf::from(env!("CARGO_BIN_EXE_shop"));
    let path = shop.with_file_name(format!("{name}-service"));
    assert!(path.exists(), "{} is missing: run the tests with `--workspace` (./scripts/test)", path.display());
    path
}

impl Process {
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("a log file");
        let child = Command::new(binary(self.name))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            // The same consumer-group identity across restarts, as a StatefulSet pod has;
            // a replica (another port) is another member.
            .env("KAFKA_GROUP_INSTANCE_ID", format!("saga-{}-{}", self.name, self.port))
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("the service starts");
        self.child = Some(child);
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} exited: {status}\n{log}", self.name);
            }
            // Ready, and it is this process that answers (not another test's on a port
            // this one could not bind).
            let pid = self.child.as_ref().map(Child::id);
            if let Ok(res) = client.get(self.url("/ready")).send().await
                && res.status() == StatusCode::OK
                && pid.is_some_and(|pid| listens_on(pid, self.port))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{} never became ready", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, as Kubernetes stops a pod: the process may finish what it is doing.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("a running process").id();
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("the child's status") {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Platform {
    pub processes: tokio::sync::Mutex<Vec<Process>>,
    pub ports: BTreeMap<&'static str, u16>,
    pub client: reqwest::Client,
    pub logs: PathBuf,
    pub database: TestDb,
    /// What every process was started with.
    env: Vec<(String, String)>,
    /// The order service's way to the product service.
    pub product_link: SlowLink,
    /// The platform's own broker, to stop and resume.
    pub broker: tokio::sync::Mutex<TestBroker>,
}

impl Platform {
    /// Migrates as Kubernetes does (each binary's `migrate`, then services that only wait
    /// for their schema) and starts the four services one at a time (each creates its
    /// topics), with the settings every test uses and `extra` on top.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let database = TestDb::create().await;
        let broker = TestBroker::start().await;
        let ports: BTreeMap<&'static str, u16> = SERVICES.iter().map(|s| (*s, free_port())).collect();
        // The order service reaches the product service through a link the test can slow down.
        let product_link = SlowLink::start(ports["product"]).await;
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", database.url().to_owned()),
            ("REDIS_URL", redis_url()),
            ("REDIS_PREFIX", redis_prefix()),
            ("KAFKA_BROKERS", broker.brokers()),
            ("JWT_SECRET", format!("test-{}", Uuid::new_v4())),
            ("BCRYPT_COST", "4".into()),
            ("LOGIN_RATE_LIMIT", "1000".into()),
            ("LOGIN_ADDRESS_RATE_LIMIT", "100000".into()),
            ("REGISTRATION_RATE_LIMIT", "100000".into()),
            ("CHECKOUT_RATE_LIMIT", "100000".into()),
            ("PAYMENT_RATE_LIMIT", "100000".into()),
            ("USER_SERVICE_URL", format!("http://127.0.0.1:{}", ports["user"])),
            ("DB_MAX_CONNECTIONS", "8".into()),
            ("PRODUCT_SERVICE_URL", format!("http://127.0.0.1:{}", product_link.port)),
            ("ORDER_SERVICE_URL", format!("http://127.0.0.1:{}", ports["order"])),
            ("RUST_LOG", std::env::var("SAGA_LOG").unwrap_or_else(|_| "warn".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let logs = std::env::temp_dir().join(format!("services-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&logs).unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
        for name in SERVICES {
            let migrated = Command::new(binary(name))
                .arg("migrate")
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .expect("the migration runs");
            assert!(migrated.status.success(), "{name}-service migrate: {}", String::from_utf8_lossy(&migrated.stderr));
        }
        env.push(("MIGRATE_ON_START".into(), "false".into()));
        let mut processes = Vec::new();
        for name in SERVICES {
            let mut process = Process {
                name,
                port: ports[name],
                env: env.clone(),
                child: None,
                log: logs.join(format!("{name}.log")),
            };
            process.start();
            process.wait_ready(&client).await;
            processes.push(process);
        }
        Self {
            processes: tokio::sync::Mutex::new(processes),
            ports,
            client,
            logs,
            database,
            env,
            product_link,
            broker: tokio::sync::Mutex::new(broker),
        }
    }

    /// Another process of service `name` on a port of its own, sharing everything with the
    /// first (database, Redis, broker, secrets), as a second pod would; ready when returned.
    pub async fn replica(&self, name: &'static str) -> Process {
        let port = free_port();
        let mut process = Process {
            name,
            port,
            env: self.env.clone(),
            child: None,
            log: self.logs.join(format!("{name}-{port}.log")),
        };
        process.start();
        process.wait_ready(&self.client).await;
        process
    }

    /// The first admin's access token.
    pub async fn admin_token(&self) -> String {
        let body = json!({"email": "admin@shop.local", "password": "admin-password-dev-only"});
        let (status, tokens) = self.send("user", Method::POST, "/api/auth/login", None, None, Some(&body)).await;
        assert_eq!(status, 200, "admin login: {tokens}");
        tokens["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a customer named `name` and logs them in; their access token.
    pub async fn customer(&self, name: &str) -> String {
        self.customer_tokens(name).await["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a customer named `name` and logs them in; the `Tokens` of the login.
    pub async fn customer_tokens(&self, name: &str) -> Value {
        let email = format!("{name}@example.com");
        let body = json!({"username": name, "email": email, "password": "correct horse"});
        let (status, user) = self.send("user", Method::POST, "/api/auth/register", None, None, Some(&body)).await;
        assert_eq!(status, 201, "register: {user}");
        let body = json!({"email": email, "password": "correct horse"});
        let (status, tokens) = self.send("user", Method::POST, "/api/auth/login", None, None, Some(&body)).await;
        assert_eq!(status, 200, "login: {tokens}");
        tokens
    }

    /// Adds `count` products with `stock` each to a new category, by the admin; returns
    /// the category's id and the products'.
    pub async fn catalogue(&self, admin: &str, count: usize, stock: i64) -> (String, Vec<String>) {
        let category = json!({"name": format!("Category {}", Uuid::new_v4().simple())});
        let (status, category) =
            self.send("product", Method::POST, "/api/categories", Some(admin), None, Some(&category)).await;
        assert_eq!(status, 201, "category: {category}");
        let mut ids = Vec::new();
        for n in 0..count {
            let body = json!({"name": format!("Item {n}"), "price": format!("{}.99", 5 + n), "stock": stock, "category_id": category["id"]});
            let (status, product) =
                self.send("product", Method::POST, "/api/products", Some(admin), None, Some(&body)).await;
            assert_eq!(status, 201, "product: {product}");
            ids.push(product["id"].as_str().unwrap().to_owned());
        }
        (category["id"].as_str().unwrap().to_owned(), ids)
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    /// One request to a service, with its bearer token, Idempotency-Key and JSON body.
    pub fn request(
        &self,
        service: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, self.url(service, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }

    /// Sends until the platform answers something other than "unavailable": a service may
    /// be down for a restart. Requests that change things carry an Idempotency-Key where
    /// the API has one, so a retry never does them twice.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let slow_card = body_token(body) == Some("tok_providerTimeout");
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            match self.request(service, method.clone(), path, token, key, body).send().await {
                Ok(res) => {
                    let status = res.status();
                    let body: Value = res.json().await.unwrap_or(Value::Null);
                    // The slow card's provider timeout: the payment is settled in the background.
                    let settling = status == StatusCode::GATEWAY_TIMEOUT && slow_card;
                    // The same key's first try, cut off by a restart, still holds its lease.
                    let running = status == StatusCode::CONFLICT && body["code"] == "request_in_progress";
                    let unavailable = matches!(status.as_u16(), 502..=504) && !settling;
                    if !(running || unavailable) {
                        return (status, body);
                    }
                    assert!(Instant::now() < deadline, "{service} {path} stayed unavailable: {status} {body}");
                }
                Err(_) => assert!(Instant::now() < deadline, "{service} {path} stayed unreachable"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn body_token(body: Option<&Value>) -> Option<&str> {
    body?.get("method")?.get("token")?.as_str()
}
