//! The in-process cache level across replicas: two `shop` processes on one database and
//! one Redis of the test's own, as two pods share them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::testing::{TestDb, TestRedis, free_port, redis_prefix};
use serde_json::{Value, json};

/// What API.md allows another replica to lag a write by; the replicas run with it.
const STALE_MAX: Duration = Duration::from_secs(1);

struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(db: &TestDb, redis: &TestRedis, prefix: &str) -> Replica {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis.url())
        .env("REDIS_PREFIX", prefix)
        .env("CACHE_STALE_MAX", "1s")
        .env("PORT", port.to_string())
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("shop starts");
    let replica = Replica { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{}/ready", replica.base)).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "shop never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica
}

async fn send(method: reqwest::Method, url: String, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.expect("the replica answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The first-level counter `outcome` (hit, miss, bypassed) of a replica's `/metrics`.
async fn first_level(replica: &Replica, outcome: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", replica.base)).await.unwrap().text().await.unwrap();
    let series = format!("cache_requests_total{{level=\"l1\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0.0, |v| v.parse().unwrap())
}

/// An admin's token and a product with 5 units, made on `replica`.
async fn admin_and_product(replica: &Replica) -> (String, String) {
    let login = json!({"email": "admin@shop.local", "password": "admin-password-dev-only"});
    let (status, tokens) =
        send(reqwest::Method::POST, format!("{}/api/auth/login", replica.base), None, Some(login)).await;
    assert_eq!(status, 200, "{tokens}");
    let admin = tokens["access_token"].as_str().unwrap().to_owned();
    let url = |path: &str| format!("{}{path}", replica.base);
    let (status, category) =
        send(reqwest::Method::POST, url("/api/categories"), Some(&admin), Some(json!({"name": "Desks"}))).await;
    assert_eq!(status, 201, "{category}");
    let body = json!({"name": "Desk", "price": "100", "stock": 5, "category_id": category["id"]});
    let (status, product) = send(reqwest::Method::POST, url("/api/products"), Some(&admin), Some(body)).await;
    assert_eq!(status, 201, "{product}");
    (admin, product["id"].as_str().unwrap().to_owned())
}

async fn stock(replica: &Replica, product: &str) -> i64 {
    let (status, body) =
        send(reqwest::Method::GET, format!("{}/api/products/{product}", replica.base), None, None).await;
    assert_eq!(status, 200, "{body}");
    body["stock"].as_i64().unwrap()
}

#[tokio::test]
async fn a_write_on_one_replica_is_read_on_the_other_within_the_staleness_bound() {
    let (db, redis, prefix) = (TestDb::reserve(), TestRedis::start().await, redis_prefix());
    let a = replica(&db, &redis, &prefix).await;
    let b = replica(&db, &redis, &prefix).await;
    let (admin, product) = admin_and_product(&a).await;
    let hits = first_level(&b, "hit").await;
    for _ in 0..3 {
        assert_eq!(stock(&b, &product).await, 5);
    }
    assert!(first_level(&b, "hit").await >= hits + 2.0, "B serves the product from its first level");

    for round in 1..=5 {
        let (status, written) = send(
            reqwest::Method::POST,
            format!("{}/api/products/{product}/stock", a.base),
            Some(&admin),
            Some(json!({"delta": 1})),
        )
        .await;
        assert_eq!(status, 200, "{written}");
        let answered = Instant::now();
        assert_eq!(stock(&a, &product).await, 5 + round, "the writer reads its own write at once");
        while stock(&b, &product).await != 5 + round {
            assert!(answered.elapsed() < STALE_MAX, "B still serves the old stock after {STALE_MAX:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn without_redis_the_first_level_is_bypassed_and_back_in_use_once_redis_is() {
    let (db, mut redis, prefix) = (TestDb::reserve(), TestRedis::start().await, redis_prefix());
    let a = replica(&db, &redis, &prefix).await;
    let (_, product) = admin_and_product(&a).await;
    stock(&a, &product).await;
    let hits = first_level(&a, "hit").await;
    assert_eq!(stock(&a, &product).await, 5);
    assert!(first_level(&a, "hit").await > hits);

    redis.stop();
    // The first read may still find the subscription alive; from then on it is gone.
    stock(&a, &product).await;
    let (hits, bypassed) = (first_level(&a, "hit").await, first_level(&a, "bypassed").await);
    for _ in 0..5 {
        assert_eq!(stock(&a, &product).await, 5, "reads go on without Redis");
    }
    assert_eq!(first_level(&a, "hit").await, hits, "nothing is served from the first level meanwhile");
    assert!(first_level(&a, "bypassed").await >= bypassed + 5.0);

    redis.resume().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hits = first_level(&a, "hit").await;
        assert_eq!(stock(&a, &product).await, 5);
        assert_eq!(stock(&a, &product).await, 5);
        if first_level(&a, "hit").await > hits {
            break;
        }
        assert!(Instant::now() < deadline, "the first level never came back after Redis did");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
