//! Calls to an upstream over real HTTP: what they carry, timeouts, retries, the breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::auth::Authenticator;
use common::client::{Upstream, UpstreamError};
use common::testing::free_port;
use common::{ApiError, ErrorCode};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn auth() -> Arc<Authenticator> {
    let secret = SecretString::from("client-test-secret-client-test-secret".to_owned());
    Arc::new(Authenticator::new(
        &secret,
        Duration::from_secs(60),
        common::revocations::Revocations::new(None, "client-test"),
    ))
}

/// Fails with 503 until it has been called `fail_first` times, then answers 200.
#[derive(Clone)]
struct Flaky {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

async fn flaky(State(flaky): State<Flaky>) -> (StatusCode, axum::Json<Value>) {
    let call = flaky.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if call <= flaky.fail_first {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"call": call})))
    } else {
        (StatusCode::OK, axum::Json(json!({"call": call})))
    }
}

async fn echo(headers: HeaderMap) -> axum::Json<Value> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    axum::Json(json!({
        "authorization": get("authorization"),
        "traceparent": get("traceparent"),
        "x-request-id": get("x-request-id"),
    }))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3)).await;
    "late"
}

async fn serve_on(listener: TcpListener, flaky_state: Flaky) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/echo", get(echo))
        .route("/slow", get(slow))
        .route("/flaky", get(flaky).post(flaky))
        .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "no") }))
        .with_state(flaky_state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn upstream_server(fail_first: usize) -> (Upstream, Arc<AtomicUsize>, Arc<Authenticator>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    serve_on(listener, Flaky { calls: calls.clone(), fail_first }).await;
    let auth = auth();
    (Upstream::new("test", &url, "order", Duration::from_millis(500), auth.clone()), calls, auth)
}

/// The status and code a client gets for `err`.
fn answer_to(err: UpstreamError) -> (StatusCode, ErrorCode) {
    let api: ApiError = err.into();
    (api.status(), api.code())
}

#[tokio::test]
async fn calls_carry_a_service_token_the_request_id_and_the_trace() {
    let (upstream, _, auth) = upstream_server(0).await;
    common::testing::spans();
    // The caller's span continues the trace a request came with.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
    let call = common::trace::instrument(span, Some(parent), upstream.call::<()>(Method::GET, "/echo", None, true));
    let answer = common::request_id::scope(axum::http::HeaderValue::from_static("req-42"), call).await.unwrap();
    let seen: Value = answer.json().unwrap();
    let token = seen["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    assert_eq!(auth.verify_service(token).unwrap().sub, "order");
    assert_eq!(seen["x-request-id"], "req-42");
    let (trace_id, parent_id, _) = common::trace::parse(seen["traceparent"].as_str().unwrap()).unwrap();
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "the same trace");
    assert_ne!(parent_id, "00f067aa0ba902b7", "a new hop");

    let missing = upstream.call::<()>(Method::GET, "/missing", None, true).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "a 4xx is the upstream's answer, not an error");
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_within_the_timeout() {
    let (upstream, _, _) = upstream_server(0).await;
    let started = Instant::now();
    let err = upstream.call::<()>(Method::GET, "/slow", None, false).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout("test")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(answer_to(err), (StatusCode::GATEWAY_TIMEOUT, ErrorCode::UpstreamTimeout));
}

#[tokio::test]
async fn only_idempotent_calls_are_retried() {
    let (upstream, calls, _) = upstream_server(2).await;
    let answer = upstream.call::<()>(Method::GET, "/flaky", None, true).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries");

    let (upstream, calls, _) = upstream_server(2).await;
    let err = upstream.call(Method::POST, "/flaky", Some(&json!({})), false).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(..)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");
    assert_eq!(answer_to(err), (StatusCode::BAD_GATEWAY, ErrorCode::UpstreamUnavailable));
}

#[tokio::test]
async fn the_breaker_opens_on_an_outage_answers_at_once_and_closes_when_the_upstream_is_back() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let upstream = Upstream::new("test", &url, "order", Duration::from_millis(500), auth());
    // Nobody listens: each non-retried call fails; five in a row open the breaker.
    for _ in 0..5 {
        let err = upstream.call::<()>(Method::GET, "/flaky", None, false).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable(..)), "{err:?}");
        assert_eq!(answer_to(err), (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::UpstreamUnavailable));
    }
    let started = Instant::now();
    let err = upstream.call::<()>(Method::GET, "/flaky", None, true).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Open("test")), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(50), "rejected at once: {:?}", started.elapsed());
    assert_eq!(answer_to(err), (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::UpstreamUnavailable));

    // The upstream comes back: after the breaker's pause a trial call goes through and
    // closes it, with no restart of the caller.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    serve_on(listener, Flaky { calls: Arc::default(), fail_first: 0 }).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match upstream.call::<()>(Method::GET, "/flaky", None, true).await {
            Ok(answer) => {
                assert_eq!(answer.status, StatusCode::OK);
                break;
            }
            Err(err) => {
                assert!(Instant::now() < deadline, "the breaker never closed: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(upstream.is_available());
}
