//! The middleware every request goes through, over real HTTP: a request whose client
//! leaves still finishes, and shutdown waits for it; a panic is a 500 problem.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::config::{CommonConfig, Env};
use common::http::{Service, Shared, app};
use common::testing::{TestDb, TestServer, base_vars};

async fn shell(router: Router) -> (TestServer, Shared, TestDb) {
    let database = TestDb::create().await;
    let config = CommonConfig::from_env(&Env::from_pairs(base_vars(&database)), 0).expect("a valid configuration");
    let shared = Shared::connect(&config).await.expect("shared dependencies");
    let db = sqlx::PgPool::connect(database.url()).await.expect("the test database");
    let service = Service { name: "test", router, openapi: Default::default(), db };
    (TestServer::spawn(app(vec![service], shared.clone())).await, shared, database)
}

#[tokio::test]
async fn a_request_whose_client_leaves_still_finishes_and_shutdown_waits_for_it() {
    let finished = Arc::new(AtomicBool::new(false));
    let router = Router::new().route(
        "/slow",
        get({
            let finished = finished.clone();
            move || async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.store(true, Ordering::SeqCst);
                "done"
            }
        }),
    );
    let (server, shared, _db) = shell(router).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    assert!(impatient.get(server.url("/slow")).send().await.is_err(), "the client gives up first");
    assert!(!finished.load(Ordering::SeqCst));
    assert_eq!(shared.requests.len(), 1, "the abandoned request is still running, tracked");
    shared.requests.close();
    tokio::time::timeout(Duration::from_secs(5), shared.requests.wait()).await.expect("it finishes");
    assert!(finished.load(Ordering::SeqCst), "the request ran to its end without its client");
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
