//! The checkout saga end to end: the user, product, order and payment services as four
//! processes (their own binaries) with a real Kafka-protocol broker, Redis and PostgreSQL.
//! Many customers browse, fill carts, check out, and pay, fail to pay, cancel or let their
//! orders expire, all at once, while the order and payment services are killed (`kill -9`)
//! and restarted. Once everything is quiet, the four invariants of API.md are checked from
//! the databases.
//!
//! The service binaries are built next to `shop` by `cargo test --workspace` (each service
//! package has tests of its own, which makes cargo build its binary).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::testing::{TestBroker, TestDb, free_port, redis_prefix, redis_url};
use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

const SERVICES: [&str; 4] = ["user", "product", "order", "payment"];
const CUSTOMERS: usize = 24;
const ROUNDS: usize = 2;
const PRODUCTS: usize = 5;
const STOCK: i64 = 12;

/// One service process, restartable on its port.
struct Process {
    name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

fn binary(name: &str) -> PathBuf {
    let shop = PathBuf::from(env!("CARGO_BIN_EXE_shop"));
    let path = shop.with_file_name(format!("{name}-service"));
    assert!(path.exists(), "{} is missing: run the tests with `--workspace` (./scripts/test)", path.display());
    path
}

impl Process {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("a log file");
        let child = Command::new(binary(self.name))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            // The same consumer-group identity across restarts, as a StatefulSet pod has.
            .env("KAFKA_GROUP_INSTANCE_ID", format!("saga-{}", self.name))
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("the service starts");
        self.child = Some(child);
    }

    /// `kill -9`: no chance to finish anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} exited: {status}\n{log}", self.name);
            }
            if let Ok(res) = client.get(self.url("/ready")).send().await
                && res.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "{} never became ready", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Platform {
    processes: tokio::sync::Mutex<Vec<Process>>,
    ports: BTreeMap<&'static str, u16>,
    client: reqwest::Client,
}

impl Platform {
    fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    /// Sends until the platform answers something other than "unavailable": a service may
    /// be down for a restart. Requests that change things carry an Idempotency-Key where
    /// the API has one, so a retry never does them twice.
    async fn send(
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
            let mut request = self.client.request(method.clone(), self.url(service, path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
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

/// What one customer does in one round.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Pay,
    DeclineThenPay,
    Cancel,
    LetExpire,
    PayThenCancel,
    PayWithSlowProvider,
}

const PLANS: [Plan; 6] =
    [Plan::Pay, Plan::DeclineThenPay, Plan::Cancel, Plan::LetExpire, Plan::PayThenCancel, Plan::PayWithSlowProvider];

async fn customer(platform: Arc<Platform>, n: usize) {
    let p = platform.as_ref();
    let email = format!("customer{n}@example.com");
    let body = json!({"username": format!("customer{n}"), "email": email, "password": "correct horse"});
    let (status, _) = p.send("user", Method::POST, "/api/auth/register", None, None, Some(&body)).await;
    assert!(status == 201 || status == 409, "register: {status}");
    let body = json!({"email": email, "password": "correct horse"});
    let (status, tokens) = p.send("user", Method::POST, "/api/auth/login", None, None, Some(&body)).await;
    assert_eq!(status, 200, "login");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let token = token.as_str();

    for round in 0..ROUNDS {
        let (status, page) = p.send("product", Method::GET, "/api/products?limit=20", None, None, None).await;
        assert_eq!(status, 200);
        let ids: Vec<String> =
            page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
        let picks: Vec<(String, i64)> = {
            let mut rng = rand::rng();
            let lines = rng.random_range(1..=2);
            ids.choose_multiple(&mut rng, lines).map(|id| (id.clone(), rng.random_range(1..=3))).collect()
        };
        for (id, quantity) in &picks {
            let (status, _) = p
                .send(
                    "order",
                    Method::PUT,
                    &format!("/api/cart/items/{id}"),
                    Some(token),
                    None,
                    Some(&json!({"quantity": quantity})),
                )
                .await;
            assert_eq!(status, 200, "add to cart");
        }
        let address = json!({"name": "C", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"});
        let key = format!("checkout-{n}-{round}");
        let (status, order) = p
            .send(
                "order",
                Method::POST,
                "/api/orders",
                Some(token),
                Some(&key),
                Some(&json!({"shipping_address": address})),
            )
            .await;
        if status == 409 && order["code"] == "insufficient_stock" {
            let _ = p.send("order", Method::DELETE, "/api/cart", Some(token), None, None).await;
            continue;
        }
        assert_eq!(status, 201, "checkout: {order}");
        let id = order["id"].as_str().unwrap().to_owned();
        let total = order["total"].as_str().unwrap().to_owned();
        let pay = |card: &'static str, key: String| {
            let body =
                json!({"order_id": id, "amount": total, "currency": "USD", "method": {"type": "card", "token": card}});
            async move { p.send("payment", Method::POST, "/api/payments", Some(token), Some(&key), Some(&body)).await }
        };
        let cancel = || async {
            p.send("order", Method::POST, &format!("/api/orders/{id}/cancel"), Some(token), None, Some(&json!({})))
                .await
        };
        match PLANS[(n + round) % PLANS.len()] {
            Plan::Pay => {
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
            }
            Plan::DeclineThenPay => {
                let (status, body) = pay("tok_chargeDeclined", format!("decline-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "decline: {status} {body}");
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
            }
            Plan::Cancel => {
                let (status, body) = cancel().await;
                assert!(status == 200 || status == 409, "cancel: {status} {body}");
            }
            Plan::LetExpire => {}
            Plan::PayThenCancel => {
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (status, body) = cancel().await;
                assert!(status == 200 || status == 409, "cancel: {status} {body}");
            }
            Plan::PayWithSlowProvider => {
                let (status, body) = pay("tok_providerTimeout", format!("slow-{n}-{round}")).await;
                assert!(matches!(status.as_u16(), 201 | 409 | 504), "slow pay: {status} {body}");
            }
        }
    }
}

/// Kills and restarts services while the customers shop.
async fn chaos(platform: Arc<Platform>) {
    for (delay, name) in [(1500, "order"), (1500, "payment"), (1000, "order")] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let mut processes = platform.processes.lock().await;
        let process = processes.iter_mut().find(|p| p.name == name).unwrap();
        process.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        process.start();
        process.wait_ready(&platform.client).await;
    }
}

/// What is still in flight (empty when everything the invariants need is settled): a
/// checkout, a payment attempt or refund, an unpaid order, an unpublished event, or a
/// published one some consumer has not applied yet.
async fn busy(db: &mut PgConnection) -> Vec<String> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT 'checkouts', (SELECT count(*) FROM ordering.checkouts)
         UNION ALL SELECT 'unpaid orders', (SELECT count(*) FROM ordering.orders WHERE status = 'pending_payment')
         UNION ALL SELECT 'payment attempts', (SELECT count(*) FROM payments.payments WHERE status = 'processing')
         UNION ALL SELECT 'pending refunds', (SELECT count(*) FROM payments.refunds WHERE status = 'pending')
         UNION ALL SELECT 'unpublished user events', (SELECT count(*) FROM users.outbox WHERE published_at IS NULL)
         UNION ALL SELECT 'unpublished product events', (SELECT count(*) FROM catalog.outbox WHERE published_at IS NULL)
         UNION ALL SELECT 'unpublished order events', (SELECT count(*) FROM ordering.outbox WHERE published_at IS NULL)
         UNION ALL SELECT 'unpublished payment events', (SELECT count(*) FROM payments.outbox WHERE published_at IS NULL)
         UNION ALL SELECT 'order events the product service has not applied', (SELECT count(*) FROM ordering.outbox e
             WHERE e.topic = 'order.events' AND NOT EXISTS (SELECT 1 FROM catalog.inbox i WHERE i.event_id = e.id))
         UNION ALL SELECT 'order events the payment service has not applied', (SELECT count(*) FROM ordering.outbox e
             WHERE e.topic = 'order.events' AND NOT EXISTS (SELECT 1 FROM payments.inbox i WHERE i.event_id = e.id))
         UNION ALL SELECT 'payment events the order service has not applied', (SELECT count(*) FROM payments.outbox e
             WHERE e.topic = 'payment.events' AND NOT EXISTS (SELECT 1 FROM ordering.inbox i WHERE i.event_id = e.id))",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    counts.into_iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect()
}

/// The invariants of API.md, each violation described.
async fn violations(db: &mut PgConnection) -> Vec<String> {
    let mut found = Vec::new();
    // 1. Stock put in = stock + reserved for pending orders + sold; reservations agree with
    //    their orders.
    let rows: Vec<(Uuid, i32, i64)> = sqlx::query_as(
        "SELECT p.id, p.stock, coalesce(sum(ri.quantity) FILTER (WHERE r.status IN ('reserved', 'committed')), 0)
         FROM catalog.products p
         LEFT JOIN catalog.reservation_items ri ON ri.product_id = p.id
         LEFT JOIN catalog.reservations r ON r.order_id = ri.order_id
         GROUP BY p.id, p.stock",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (product, stock, held) in rows {
        if i64::from(stock) + held != STOCK {
            found.push(format!("product {product}: stock {stock} + held {held} != {STOCK}"));
        }
    }
    let mismatched: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT o.id, o.status, r.status FROM ordering.orders o LEFT JOIN catalog.reservations r ON r.order_id = o.id
         WHERE NOT (   (o.status = 'pending_payment' AND r.status = 'reserved')
                    OR (o.status IN ('paid', 'shipped', 'delivered') AND r.status = 'committed')
                    OR (o.status = 'cancelled' AND r.status = 'released'))",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, status, reservation) in mismatched {
        found.push(format!("order {order} is {status} but its reservation is {reservation:?}"));
    }
    let orphans: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT r.order_id, r.status FROM catalog.reservations r
         WHERE r.status <> 'released' AND NOT EXISTS (SELECT 1 FROM ordering.orders o WHERE o.id = r.order_id)",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, status) in orphans {
        found.push(format!("reservation {order} is {status} without an order"));
    }
    // 2. Every paid, shipped or delivered order has exactly one succeeded payment equal to
    //    its total.
    let unpaid: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT o.id, count(p.id) FROM ordering.orders o
         LEFT JOIN payments.payments p ON p.order_id = o.id AND p.status IN ('succeeded', 'partially_refunded')
              AND p.amount = o.total
         WHERE o.status IN ('paid', 'shipped', 'delivered') GROUP BY o.id HAVING count(p.id) <> 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, payments) in unpaid {
        found.push(format!("paid order {order} has {payments} succeeded payments of its total"));
    }
    // 3. Every cancelled order was never charged, or was refunded in full (what the
    //    provider charged minus what it gave back is zero).
    let kept: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT o.id, (coalesce(c.charged, 0) - coalesce(r.refunded, 0))::text FROM ordering.orders o
         LEFT JOIN (SELECT p.order_id, sum(pc.amount) AS charged FROM payments.provider_charges pc
                    JOIN payments.payments p ON p.id = pc.payment_id WHERE pc.outcome = 'succeeded' GROUP BY p.order_id) c
                ON c.order_id = o.id
         LEFT JOIN (SELECT p.order_id, sum(pr.amount) AS refunded FROM payments.provider_refunds pr
                    JOIN payments.payments p ON p.id = pr.payment_id GROUP BY p.order_id) r
                ON r.order_id = o.id
         WHERE o.status = 'cancelled' AND coalesce(c.charged, 0) <> coalesce(r.refunded, 0)",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, amount) in kept {
        found.push(format!("cancelled order {order} kept {amount} of the customer's money"));
    }
    let charged_twice: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT p.order_id, count(*) FROM payments.provider_charges pc JOIN payments.payments p ON p.id = pc.payment_id
         WHERE pc.outcome = 'succeeded' GROUP BY p.order_id HAVING count(*) > 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, charges) in charged_twice {
        found.push(format!("order {order} was charged {charges} times"));
    }
    // The provider's books agree: a paid order kept exactly its total; no charge exists
    // that the payment service has no record of.
    let books: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT o.id, o.total::text, (coalesce(c.charged, 0) - coalesce(r.refunded, 0))::text FROM ordering.orders o
         LEFT JOIN (SELECT p.order_id, sum(pc.amount) AS charged FROM payments.provider_charges pc
                    JOIN payments.payments p ON p.id = pc.payment_id WHERE pc.outcome = 'succeeded' GROUP BY p.order_id) c
                ON c.order_id = o.id
         LEFT JOIN (SELECT p.order_id, sum(pr.amount) AS refunded FROM payments.provider_refunds pr
                    JOIN payments.payments p ON p.id = pr.payment_id GROUP BY p.order_id) r
                ON r.order_id = o.id
         WHERE o.status IN ('paid', 'shipped', 'delivered') AND coalesce(c.charged, 0) - coalesce(r.refunded, 0) <> o.total",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (order, total, kept) in books {
        found.push(format!("paid order {order} of {total}: the provider kept {kept}"));
    }
    let unrecorded: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT pc.payment_id FROM payments.provider_charges pc
         WHERE pc.outcome = 'succeeded' AND NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = pc.payment_id)",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (payment,) in unrecorded {
        found.push(format!("the provider charged {payment}, which the payment service does not know"));
    }
    let failed_but_charged: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT p.id FROM payments.payments p JOIN payments.provider_charges pc ON pc.payment_id = p.id
         WHERE p.status = 'failed' AND pc.outcome = 'succeeded'",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (payment,) in failed_but_charged {
        found.push(format!("payment {payment} is failed but the provider charged it"));
    }
    // 4. Every event is applied once in effect: every event a service consumes is in its
    //    inbox (the inbox's key makes "once" hold), and nothing was dead-lettered.
    let unapplied: Vec<(String, Uuid, String)> = sqlx::query_as(
        "SELECT 'product', e.id, e.event_type FROM ordering.outbox e
           WHERE e.topic = 'order.events' AND NOT EXISTS (SELECT 1 FROM catalog.inbox i WHERE i.event_id = e.id)
         UNION ALL
         SELECT 'payment', e.id, e.event_type FROM ordering.outbox e
           WHERE e.topic = 'order.events' AND NOT EXISTS (SELECT 1 FROM payments.inbox i WHERE i.event_id = e.id)
         UNION ALL
         SELECT 'order', e.id, e.event_type FROM payments.outbox e
           WHERE e.topic = 'payment.events' AND NOT EXISTS (SELECT 1 FROM ordering.inbox i WHERE i.event_id = e.id)",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (service, event, kind) in unapplied {
        found.push(format!("the {service} service never applied {kind} {event}"));
    }
    found
}

#[tokio::test]
async fn the_checkout_saga_keeps_every_invariant_across_restarts() {
    let database = TestDb::create().await;
    let broker = TestBroker::start().await;
    let ports: BTreeMap<&'static str, u16> = SERVICES.iter().map(|s| (*s, free_port())).collect();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database.url().to_owned()),
        ("REDIS_URL", redis_url()),
        ("REDIS_PREFIX", redis_prefix()),
        ("KAFKA_BROKERS", broker.brokers()),
        ("JWT_SECRET", format!("saga-{}", Uuid::new_v4())),
        ("BCRYPT_COST", "4".into()),
        ("LOGIN_RATE_LIMIT", "1000".into()),
        ("DB_MAX_CONNECTIONS", "8".into()),
        ("ORDER_PAYMENT_TIMEOUT", "30s".into()),
        ("UPSTREAM_TIMEOUT", "1s".into()),
        ("PROVIDER_TIMEOUT", "1s".into()),
        ("CHECKOUT_RECOVERY_AFTER", "5s".into()),
        ("PRODUCT_SERVICE_URL", format!("http://127.0.0.1:{}", ports["product"])),
        ("ORDER_SERVICE_URL", format!("http://127.0.0.1:{}", ports["order"])),
        ("RUST_LOG", std::env::var("SAGA_LOG").unwrap_or_else(|_| "warn".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let logs = std::env::temp_dir().join(format!("saga-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let mut processes = Vec::new();
    // One at a time: each creates its schema and topics.
    for name in SERVICES {
        let mut process =
            Process { name, port: ports[name], env: env.clone(), child: None, log: logs.join(format!("{name}.log")) };
        process.start();
        process.wait_ready(&client).await;
        processes.push(process);
    }
    let platform = Arc::new(Platform { processes: tokio::sync::Mutex::new(processes), ports, client });

    // The catalogue, by the first admin.
    let body = json!({"email": "admin@shop.local", "password": "admin-password-dev-only"});
    let (status, tokens) = platform.send("user", Method::POST, "/api/auth/login", None, None, Some(&body)).await;
    assert_eq!(status, 200);
    let admin = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, category) = platform
        .send("product", Method::POST, "/api/categories", Some(&admin), None, Some(&json!({"name": "Saga"})))
        .await;
    for n in 0..PRODUCTS {
        let body = json!({"name": format!("Item {n}"), "price": format!("{}.99", 5 + n), "stock": STOCK, "category_id": category["id"]});
        let (status, _) =
            platform.send("product", Method::POST, "/api/products", Some(&admin), None, Some(&body)).await;
        assert_eq!(status, 201);
    }

    let chaos = tokio::spawn(chaos(platform.clone()));
    let customers: Vec<_> = (0..CUSTOMERS).map(|n| tokio::spawn(customer(platform.clone(), n))).collect();
    for customer in customers {
        customer.await.expect("a customer's journey");
    }
    chaos.await.unwrap();

    let db = PgPool::connect(database.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Each look is one snapshot of every schema, so "quiet" and the checks see one moment.
    let (busy, found) = loop {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.unwrap();
        let busy = busy(&mut tx).await;
        let found = violations(&mut tx).await;
        tx.rollback().await.unwrap();
        if (busy.is_empty() && found.is_empty()) || Instant::now() > deadline {
            break (busy, found);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN o.status = 'cancelled' AND EXISTS (SELECT 1 FROM payments.payments p
                          WHERE p.order_id = o.id AND p.status = 'refunded') THEN 'cancelled and refunded'
                     WHEN o.status = 'cancelled' AND EXISTS (SELECT 1 FROM ordering.outbox e
                          WHERE e.aggregate_id = o.id AND e.event_type = 'order.expired') THEN 'expired'
                     ELSE o.status END, count(*)
         FROM ordering.orders o GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments WHERE status = 'failed'")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("orders by outcome: {outcomes:?}; declined payments: {failed}");
    assert!(busy.is_empty(), "the platform never became quiet: {busy:?} (logs in {})", logs.display());
    assert!(found.is_empty(), "invariant violations (logs in {}):\n{}", logs.display(), found.join("\n"));
    let count = |outcome: &str| outcomes.iter().find(|(o, _)| o == outcome).map_or(0, |(_, n)| *n);
    for outcome in ["paid", "cancelled", "cancelled and refunded", "expired"] {
        assert!(count(outcome) > 0, "the run drove no {outcome} order: {outcomes:?}");
    }
    drop(broker);
}
