//! Idempotency-Key semantics against real PostgreSQL, through a minimal endpoint that
//! records an effect per request.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::ApiError;
use common::db::{self, Schema};
use common::idempotency::{Begin, Idempotency, Idempotent};
use common::testing::{TestDb, TestServer, created_or_conflict, problem};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

const SCHEMA: Schema = Schema { name: "idemtest", role: "idemtest_svc" };

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Charge {
    amount: i32,
    #[serde(default)]
    note: Option<String>,
}

impl common::extract::Body for Charge {}

/// How long a request holds its key.
const LEASE: Duration = Duration::from_secs(5);

/// Charges once per request, or replays; `x-user` scopes the key, `x-delay-ms` keeps the
/// request running for a while, and `x-crash` stops it after its effect's id is chosen
/// (recorded as the claim's progress) and before the effect, as a crash would.
async fn charge(
    State(db): State<PgPool>,
    headers: HeaderMap,
    Idempotent { body, key }: Idempotent<Charge>,
) -> Result<Response, ApiError> {
    let user = headers.get("x-user").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_owned();
    let mut id = Uuid::now_v7();
    let claim = match &key {
        None => None,
        Some(key) => match key.begin(&db, &user, LEASE, &id).await? {
            Begin::Fresh(claim) => Some(claim),
            Begin::Replay(response) => return Ok(response),
            Begin::InProgress => return Err(Idempotency::in_progress()),
        },
    };
    if let Some(resumed) = claim.as_ref().and_then(|claim| claim.resumed) {
        id = resumed;
    }
    if headers.contains_key("x-crash") {
        return Ok(StatusCode::SERVICE_UNAVAILABLE.into_response());
    }
    if let Some(delay) = headers.get("x-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO effects (id, amount) VALUES ($1, $2)")
        .bind(id)
        .bind(body.amount)
        .execute(&mut *tx)
        .await?;
    let response = json!({"id": id, "amount": body.amount, "note": body.note});
    if let Some(claim) = &claim
        && !claim.complete(&mut tx, StatusCode::CREATED, &response).await?
    {
        return Err(Idempotency::in_progress());
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(response)).into_response())
}

struct App {
    server: TestServer,
    db: PgPool,
    _database: TestDb,
}

impl App {
    async fn spawn() -> Self {
        let database = TestDb::create().await;
        db::migrate(&database.url, SCHEMA, &Migrator::DEFAULT).await.unwrap();
        let db = db::connect(&database.url, SCHEMA, 10).await.unwrap();
        sqlx::query("CREATE TABLE effects (id UUID PRIMARY KEY, amount INT NOT NULL)").execute(&db).await.unwrap();
        let router = Router::new().route("/charges", post(charge)).with_state(db.clone());
        Self { server: TestServer::spawn(router).await, db, _database: database }
    }

    async fn charge(&self, key: Option<&str>, user: &str, body: Value, delay_ms: u64) -> reqwest::Response {
        self.charge_with(key, user, body, delay_ms, false).await
    }

    async fn charge_with(
        &self,
        key: Option<&str>,
        user: &str,
        body: Value,
        delay_ms: u64,
        crash: bool,
    ) -> reqwest::Response {
        let mut req = self
            .server
            .client
            .post(self.server.url("/charges"))
            .header("x-user", user)
            .header("x-delay-ms", delay_ms.to_string())
            .json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if crash {
            req = req.header("x-crash", "1");
        }
        req.send().await.unwrap()
    }

    /// A charge with the body exactly as given (the client's own key order and spacing).
    async fn charge_raw(&self, key: &str, body: &'static str) -> reqwest::Response {
        let url = self.server.url("/charges");
        let req = self.server.client.post(url).header("x-user", "jane").header("idempotency-key", key);
        req.header("content-type", "application/json").body(body).send().await.unwrap()
    }

    async fn effects(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects").fetch_one(&self.db).await.unwrap()
    }
}

/// `res` is the replay of the first answer, `first`.
async fn assert_replays(res: reqwest::Response, first: &Value) {
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(&res.json::<Value>().await.unwrap(), first);
}

#[tokio::test]
async fn the_same_key_and_body_replays_the_first_response() {
    let app = App::spawn().await;
    let first = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(again.status(), 201);
    assert_replays(again, &first).await;
    assert_eq!(app.effects().await, 1);
}

#[tokio::test]
async fn the_same_json_value_in_another_key_order_or_spacing_replays() {
    let app = App::spawn().await;
    let first = app.charge_raw("k1", r#"{"amount":5,"note":"gift"}"#).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app.charge_raw("k1", "{\n  \"note\" : \"gift\",\n  \"amount\" : 5\n}").await;
    assert_eq!(again.status(), 201);
    assert_replays(again, &first).await;
    let other = app.charge_raw("k1", r#"{"note":"gift","amount":6}"#).await;
    assert_eq!(other.status(), 422, "another value is another request");
    assert_eq!(app.effects().await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let app = App::spawn().await;
    assert_eq!(app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await.status(), 201);
    let res = app.charge(Some("k1"), "jane", json!({"amount": 6}), 0).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await["code"], "idempotency_key_reused");
    assert_eq!(app.effects().await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_take_effect_once() {
    let app = App::spawn().await;
    let outcomes =
        futures::future::join_all((0..8).map(|_| app.charge(Some("same"), "jane", json!({"amount": 5}), 300))).await;
    assert!(!created_or_conflict(outcomes, "request_in_progress").await.is_empty());
    assert_eq!(app.effects().await, 1, "one effect, whatever the interleaving");
    // Once the first has finished, the key replays.
    let res = app.charge(Some("same"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn a_request_that_stopped_half_way_is_resumed_by_its_retry_once_its_lease_has_run_out() {
    let app = App::spawn().await;
    let stopped = app.charge_with(Some("k1"), "jane", json!({"amount": 5}), 0, true).await;
    assert_eq!(stopped.status(), 503);
    let early = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(early.status(), 409, "its lease still runs");
    assert_eq!(problem(early).await["code"], "request_in_progress");
    let other = app.charge(Some("k1"), "jane", json!({"amount": 6}), 0).await;
    assert_eq!(problem(other).await["code"], "idempotency_key_reused", "another body is refused while it runs too");
    let recorded: Value =
        sqlx::query_scalar("SELECT progress FROM idempotency_keys WHERE key = 'k1'").fetch_one(&app.db).await.unwrap();
    sqlx::query("UPDATE idempotency_keys SET running_until = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    let resumed = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(resumed.status(), 201);
    let resumed: Value = resumed.json().await.unwrap();
    assert_eq!(resumed["id"], recorded, "the retry carried on with what the first attempt recorded");
    let replayed = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_replays(replayed, &resumed).await;
    assert_eq!(app.effects().await, 1);
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_over_cannot_complete() {
    let app = App::spawn().await;
    let key = Idempotency::unkeyed("work-1");
    let Begin::Fresh(first) = key.begin(&app.db, "jane", LEASE, &1).await.unwrap() else { panic!("a new key") };
    assert!(!first.is_client_key());
    assert!(matches!(key.begin(&app.db, "jane", LEASE, &2).await.unwrap(), Begin::InProgress));
    first.lapse(&app.db).await.unwrap();
    let Begin::Fresh(second) = key.begin(&app.db, "jane", LEASE, &2).await.unwrap() else { panic!("taken over") };
    assert_eq!(second.resumed, Some(1), "what the first holder recorded");
    let mut tx = app.db.begin().await.unwrap();
    assert!(!first.complete(&mut tx, StatusCode::CREATED, &json!({})).await.unwrap(), "no longer its key");
    assert!(second.complete(&mut tx, StatusCode::CREATED, &json!({})).await.unwrap());
    tx.commit().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0, "work no client can repeat keeps no answer");
}

#[tokio::test]
async fn keys_are_scoped_per_caller_and_live_a_day() {
    let app = App::spawn().await;
    assert_eq!(app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await.status(), 201);
    let other = app.charge(Some("k1"), "john", json!({"amount": 5}), 0).await;
    assert!(other.headers().get("idempotent-replayed").is_none(), "another caller's key is another key");
    assert_eq!(app.effects().await, 2);

    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'").execute(&app.db).await.unwrap();
    let later = app.charge(Some("k1"), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(later.status(), 201);
    assert!(later.headers().get("idempotent-replayed").is_none(), "an expired key is new again");
    assert_eq!(app.effects().await, 3);
}

#[tokio::test]
async fn without_a_key_every_request_counts_and_bad_keys_are_400() {
    let app = App::spawn().await;
    for _ in 0..2 {
        assert_eq!(app.charge(None, "jane", json!({"amount": 5}), 0).await.status(), 201);
    }
    assert_eq!(app.effects().await, 2);
    let res = app.charge(Some(&"k".repeat(256)), "jane", json!({"amount": 5}), 0).await;
    assert_eq!(res.status(), 400);
    let res = app.charge(Some("k1"), "jane", json!({"amount": "five"}), 0).await;
    assert_eq!(res.status(), 422, "the body is still validated");
}
