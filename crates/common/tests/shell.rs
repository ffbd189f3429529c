//! The middleware every request goes through, over real HTTP: a request whose client
//! leaves still finishes, and shutdown waits for it, unless it runs past its deadline,
//! which ends it with a 503 problem; a panic is a 500 problem.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::config::{CommonConfig, Env};
use common::http::{Service, Shared, app};
use common::testing::{TestDb, TestServer, base_vars, eventually, expected, problem, with_overrides};

async fn shell(router: Router) -> (TestServer, Shared, TestDb) {
    shell_with(router, &[]).await
}

async fn shell_with(router: Router, vars: &[(&str, &str)]) -> (TestServer, Shared, TestDb) {
    let database = TestDb::create().await;
    let env = Env::from_pairs(with_overrides(base_vars(&database), vars));
    let config = CommonConfig::from_env(&env, 0).expect("a valid configuration");
    let shared = Shared::connect(&config).await.expect("shared dependencies");
    let db = sqlx::PgPool::connect(database.url()).await.expect("the test database");
    let service = Service { name: "test", router, openapi: Default::default(), db };
    (TestServer::spawn(app(vec![service], shared.clone())).await, shared, database)
}

/// `/slow`, which answers after `millis` and sets its flag once it has got to its end.
fn slow(millis: u64) -> (Router, Arc<AtomicBool>) {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let handler = move || async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        flag.store(true, Ordering::SeqCst);
        "done"
    };
    (Router::new().route("/slow", get(handler)), finished)
}

#[tokio::test]
async fn a_request_whose_client_leaves_still_finishes_and_shutdown_waits_for_it() {
    let (router, finished) = slow(300);
    let (server, shared, _db) = shell(router).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    assert!(impatient.get(server.url("/slow")).send().await.is_err(), "the client gives up first");
    // Tracked once the server has seen the connection close (the request is moved into a
    // task of its own then), well before the handler is done.
    eventually("the abandoned request to be tracked", || async { shared.requests.len() == 1 }).await;
    assert!(!finished.load(Ordering::SeqCst), "the abandoned request is still running");
    shared.requests.close();
    tokio::time::timeout(Duration::from_secs(5), shared.requests.wait()).await.expect("it finishes");
    assert!(finished.load(Ordering::SeqCst), "the request ran to its end without its client");
}

#[tokio::test]
async fn a_request_still_running_at_its_deadline_is_ended_and_answered_503() {
    let (router, finished) = slow(1000);
    let router = router.route("/fast", get(|| async { "fast" }));
    let (server, shared, _db) = shell_with(router, &[("REQUEST_TIMEOUT", "200ms")]).await;

    let started = Instant::now();
    let res = server.get("/slow", None).await;
    assert_eq!(res.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(900), "answered at the deadline: {:?}", started.elapsed());
    let detail = "the request took longer than the server allows and was stopped; retry it later";
    assert_eq!(problem(res).await, expected(503, "unavailable", "Service unavailable", Some(detail)));
    assert_eq!(server.get("/fast", None).await.text().await.unwrap(), "fast", "the server goes on");

    // A client that left before the deadline does not keep its request alive past it.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    assert!(impatient.get(server.url("/slow")).send().await.is_err(), "the client gives up first");
    eventually("the abandoned request to end at its deadline", || async { shared.requests.is_empty() }).await;

    // Ended, not merely answered: neither handler ever got to its end.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!finished.load(Ordering::SeqCst), "the handlers were dropped at the deadline");
}

async fn panics() -> &'static str {
    panic!("a bug")
}

#[tokio::test]
async fn a_panicking_handler_is_answered_500_as_a_problem_and_the_connection_survives() {
    let router = Router::new().route("/panic", get(panics)).route("/fine", get(|| async { "fine" }));
    let (server, _shared, _db) = shell(router).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let res = client.get(server.url("/panic")).send().await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "internal_error", "{body}");
    assert!(!body.to_string().contains("a bug"), "the panic's message is not leaked: {body}");
    assert_eq!(client.get(server.url("/fine")).send().await.unwrap().text().await.unwrap(), "fine");
}
