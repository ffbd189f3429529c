//! The `shop` binary as an operator runs it: a fresh database, one command, signals.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::testing::{TestDb, free_port, redis_prefix};
use serde_json::json;

fn shop_command(db: &TestDb, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shop"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("PORT", port.to_string())
        .env("BCRYPT_COST", "4")
        .env("REDIS_PREFIX", redis_prefix())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    cmd
}

async fn wait_until_up(child: &mut Child, port: u16) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("shop exited early: {status}");
        }
        if client.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("shop did not start listening");
}

/// A `shop` process listening on `base`, and a client for it.
struct Running {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Running {
    /// Starts `shop` on a fresh database with `vars` beside the defaults, and waits until
    /// it listens.
    async fn start(db: &TestDb, vars: &[(&str, &str)]) -> Self {
        let port = free_port();
        Self::spawn(shop_command(db, port).envs(vars.iter().copied()), port).await
    }

    /// Runs `command`, a [`shop_command`] on `port`, and waits until it listens.
    async fn spawn(command: &mut Command, port: u16) -> Self {
        let mut child = command.spawn().unwrap();
        wait_until_up(&mut child, port).await;
        Self { child, base: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() }
    }

    /// A request to `path`, with `token` as its bearer when there is one.
    fn to(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.to(reqwest::Method::GET, path, token).send().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> reqwest::Response {
        self.to(reqwest::Method::POST, path, token).json(&body).send().await.unwrap()
    }

    /// Logs in and returns the access token.
    async fn login(&self, email: &str, password: &str) -> String {
        let res = self.post("/api/auth/login", None, json!({"email": email, "password": password})).await;
        assert_eq!(res.status(), 200);
        res.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// SIGTERM, then the process must exit 0.
    async fn stop(self) {
        let mut child = self.child;
        let signalled = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(signalled.success());
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status}");
    }
}

#[tokio::test]
async fn shop_creates_its_database_migrates_serves_and_stops_gracefully() {
    let db = TestDb::reserve();
    // The default bcrypt cost makes a login take long enough to still be running when
    // the signal arrives.
    let shop = Running::start(&db, &[("BCRYPT_COST", "12")]).await;

    let ready = shop.get("/ready", None).await;
    assert_eq!(ready.status(), 200);
    let checks: serde_json::Value = ready.json().await.unwrap();
    for service in ["user", "product", "order", "payment"] {
        assert_eq!(checks["checks"][format!("database:{service}")], "up", "{checks}");
    }
    assert_eq!(shop.get("/api/products", None).await.status(), 200, "the product service is nested too");
    let jane = json!({"username": "jane", "email": "jane@example.com", "password": "correct horse"});
    assert_eq!(shop.post("/api/auth/register", None, jane).await.status(), 201);

    // A request in flight when SIGTERM arrives is still answered; then the process exits 0.
    let in_flight = shop.to(reqwest::Method::POST, "/api/auth/login", None);
    let in_flight =
        tokio::spawn(in_flight.json(&json!({"email": "jane@example.com", "password": "correct horse"})).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (client, base) = (shop.client.clone(), shop.base.clone());
    shop.stop().await;
    let answered = in_flight.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(answered.status(), 200);
    assert!(client.get(format!("{base}/health")).send().await.is_err(), "no longer listening");
}

#[tokio::test]
async fn shop_migrate_only_migrates_and_is_repeatable() {
    let db = TestDb::reserve();
    for _ in 0..2 {
        let status = shop_command(&db, free_port()).arg("migrate").status().unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn shop_seed_fills_the_catalogue() {
    let db = TestDb::reserve();
    let out =
        shop_command(&db, free_port()).args(["seed", "--products", "1200"]).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "seeded 1200 products");
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(db.url()).await.unwrap();
    let (products, categories): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT category_id) FROM catalog.products")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(products, 1200);
    assert!(categories >= 10, "{categories}");
}

#[tokio::test]
async fn bad_configuration_stops_with_the_variables_name() {
    let db = TestDb::reserve();
    let out = shop_command(&db, free_port()).env("ACCESS_TOKEN_TTL", "soon").stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ACCESS_TOKEN_TTL"));

    let out = shop_command(&db, free_port()).env("APP_ENV", "production").stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"));

    let out = shop_command(&db, free_port()).arg("frobnicate").stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: shop"));
}

/// What `shop` logs (at `info`) while it answers one request that continues the trace
/// `trace_id`, with `OTEL_SDK_DISABLED` set to `disabled`.
async fn log_of_one_traced_request(disabled: &str, trace_id: &str) -> String {
    let db = TestDb::reserve();
    let port = free_port();
    let log = std::env::temp_dir().join(format!("shop-{}.log", uuid::Uuid::new_v4().simple()));
    let mut command = shop_command(&db, port);
    command.env("RUST_LOG", "info").env("NO_COLOR", "1").env("OTEL_SDK_DISABLED", disabled);
    let shop = Running::spawn(command.stdout(std::fs::File::create(&log).unwrap()), port).await;
    let res = shop
        .to(reqwest::Method::GET, "/api/products", None)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    shop.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    text
}

#[tokio::test]
async fn otel_sdk_disabled_turns_tracing_off() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (on, off) =
        tokio::join!(log_of_one_traced_request("false", trace_id), log_of_one_traced_request("true", trace_id));
    let answered = |log: &str| log.lines().any(|l| l.contains("response") && l.contains("/api/products"));
    assert!(answered(&on) && answered(&off), "the request's log line is missing:\n{on}\n---\n{off}");
    // On, the request's span continues the caller's trace and its log lines say so.
    assert!(on.contains(trace_id), "tracing on: the caller's trace id is not logged:\n{on}");
    // Off, no span reaches OpenTelemetry: nothing has a trace id.
    assert!(!off.contains(trace_id) && !off.contains("trace_id"), "tracing off, yet a trace id is logged:\n{off}");
}

#[tokio::test]
async fn shop_runs_a_whole_checkout_in_one_process_without_redis_or_kafka() {
    let db = TestDb::reserve();
    let shop = Running::start(&db, &[("ORDER_PAYMENT_TIMEOUT", "3s")]).await;
    let admin = shop.login("admin@shop.local", "admin-password-dev-only").await;
    let category = shop.post("/api/categories", Some(&admin), json!({"name": "Desks"})).await;
    let category: serde_json::Value = category.json().await.unwrap();
    let desk = json!({"name": "Oak desk", "price": "250.00", "stock": 3, "category_id": category["id"]});
    let product: serde_json::Value = shop.post("/api/products", Some(&admin), desk).await.json().await.unwrap();
    let product_path = format!("/api/products/{}", product["id"].as_str().unwrap());
    let kim = json!({"username": "kim", "email": "kim@example.com", "password": "correct horse"});
    assert_eq!(shop.post("/api/auth/register", None, kim).await.status(), 201);
    let kim = shop.login("kim@example.com", "correct horse").await;

    let res = shop
        .to(reqwest::Method::PUT, &format!("/api/cart/items/{}", product["id"].as_str().unwrap()), Some(&kim))
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the order service reaches the product service in the same process");
    let address = json!({"name": "Kim", "line1": "1 Main St", "city": "Oslo", "postal_code": "0150", "country": "NO"});
    let res = shop.post("/api/orders", Some(&kim), json!({"shipping_address": address})).await;
    assert_eq!(res.status(), 201);
    let order: serde_json::Value = res.json().await.unwrap();
    assert_eq!(order["total"], "500.00");
    let json = |res: reqwest::Response| async move { res.json::<serde_json::Value>().await.unwrap() };
    assert_eq!(json(shop.get(&product_path, None).await).await["stock"], 1);

    // A second order is paid: the payment service asks the order service (same process)
    // and the in-process events pay the order.
    let second = json!({"items": [{"product_id": product["id"], "quantity": 1}], "shipping_address": address});
    let paid = json(shop.post("/api/orders", Some(&kim), second).await).await;
    let res = shop
        .to(reqwest::Method::POST, "/api/payments", Some(&kim))
        .header("idempotency-key", "kim-1")
        .json(&json!({"order_id": paid["id"], "amount": "250.00", "currency": "USD",
                      "method": {"type": "card", "token": "tok_visa"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(json(res).await["status"], "succeeded");
    let status_of = |order: &serde_json::Value| format!("/api/orders/{}", order["id"].as_str().unwrap());
    let mut is_paid = false;
    for _ in 0..50 {
        if json(shop.get(&status_of(&paid), Some(&kim)).await).await["status"] == "paid" {
            is_paid = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(is_paid, "the paid order is paid");

    // Unpaid, the first expires; the in-process events put its units back.
    let mut restocked = false;
    for _ in 0..100 {
        if json(shop.get(&product_path, None).await).await["stock"] == 2 {
            restocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restocked, "the expired order's stock came back; the paid one's stays sold");
    assert_eq!(json(shop.get(&status_of(&order), Some(&kim)).await).await["status"], "cancelled");
    shop.stop().await;
}
