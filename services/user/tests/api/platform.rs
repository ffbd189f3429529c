//! What every service answers the same way: probes, metrics, request ids, unknown
//! routes, the OpenAPI document, a cache outage and a database outage.

use serde_json::json;

use common::testing::{TestRedis, eventually};

use crate::helpers::{TestApp, expected, problem};

#[tokio::test]
async fn health_and_ready_answer() {
    let app = TestApp::spawn().await;
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));

    let res = app.get("/ready", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ready", "checks": {"database:user": "up", "redis": "up"}})
    );
}

#[tokio::test]
async fn a_database_outage_makes_the_service_unready_until_it_ends() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/ready", None).await.status(), 200);
    app.database().set_reachable(false).await;
    let res = app.get("/ready", None).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "unavailable", "checks": {"database:user": "down", "redis": "up"}})
    );
    app.database().set_reachable(true).await;
    eventually("/ready answers 200 again", || async { app.get("/ready", None).await.status() == 200 }).await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let res = app.client().get(app.url("/health")).header("x-request-id", "client-id-42").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-id-42");

    let res = app.get("/health", None).await;
    let generated = res.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let too_long = "a".repeat(129);
    let res = app.client().get(app.url("/nowhere")).header("x-request-id", &too_long).send().await.unwrap();
    let replaced = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, too_long);
    // The error body carries the same id (checked inside `problem`).
    assert_eq!(problem(res).await, expected(404, "not_found", "Not found", None));
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    let res = app.get("/api/nothing-here", None).await;
    assert_eq!(res.status(), 404);
    assert_eq!(problem(res).await, expected(404, "not_found", "Not found", None));

    let res = app.client().delete(app.url("/api/auth/login")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(problem(res).await, expected(405, "method_not_allowed", "Method not allowed", None));
}

#[tokio::test]
async fn metrics_report_requests_by_route_template_and_the_pool() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let path = format!("/api/users/{}", uuid::Uuid::now_v7());
    assert_eq!(app.get(&path, Some(&admin.access)).await.status(), 404);
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/api/users/{id}""#)
            && l.contains(r#"status="404""#)
            && l.contains(r#"method="GET""#)),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains(r#"db_pool_connections{service="user",state="idle"}"#), "{text}");
}

#[tokio::test]
async fn invented_methods_are_counted_as_other_and_add_no_series() {
    let app = TestApp::spawn().await;
    for n in 0..5 {
        let method = reqwest::Method::from_bytes(format!("FROBNICATE{n}").as_bytes()).unwrap();
        let res = app.client().request(method, app.url("/api/auth/login")).send().await.unwrap();
        assert_eq!(res.status(), 405);
    }
    let text = app.get("/metrics", None).await.text().await.unwrap();
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("http_requests_total{")).collect();
    assert!(!text.contains("FROBNICATE"), "{text}");
    let others: Vec<&&str> =
        series.iter().filter(|l| l.contains(r#"method="other""#) && l.contains(r#"route="/api/auth/login""#)).collect();
    assert_eq!(others.len(), 1, "one series for all five: {series:#?}");
    assert!(others[0].ends_with(" 5"), "{others:?}");
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/users/me",
        "/api/users/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["paths"]["/api/users/me"]["patch"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // What the shared extractors answer is declared on every operation it can happen to.
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"].as_object().unwrap().keys().cloned().collect()
    };
    let login = statuses("/api/auth/login", "post");
    for status in ["200", "400", "413", "415", "422", "503"] {
        assert!(login.contains(&status.to_owned()), "login declares {status}: {login:?}");
    }
    let user = statuses("/api/users/{id}", "get");
    for status in ["401", "403", "404", "503"] {
        assert!(user.contains(&status.to_owned()), "GET /api/users/{{id}} declares {status}: {user:?}");
    }
    // An admin-only operation names the role, and gets the 403 with it.
    let by_id = &doc["paths"]["/api/users/{id}"]["get"];
    assert_eq!(by_id["security"], serde_json::json!([{ "bearer": ["admin"] }]));
    assert_eq!(by_id["responses"]["403"]["description"], "`forbidden`: not an admin");
    let me = &doc["paths"]["/api/users/me"]["get"];
    assert!(me["responses"]["403"].is_null(), "a customer's own profile has no 403: {me}");

    let res = app.get("/docs/", None).await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger"), "the interactive page is served");
}

#[tokio::test]
async fn a_cache_outage_slows_requests_down_but_never_fails_them() {
    let mut redis = TestRedis::start().await;
    let app = TestApp::spawn_with(&[("REDIS_URL", &redis.url())]).await;
    let jane = app.customer("jane").await;
    assert_eq!(app.get("/api/users/me", Some(&jane.access)).await.status(), 200);

    redis.stop();

    // Degraded, not unready: every replica shares the cache, so an outage of it must not
    // take them all out of rotation.
    let res = app.get("/ready", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "degraded", "checks": {"database:user": "up", "redis": "down"}})
    );
    // Reads, writes and logins go on without the cache and the shared limiter.
    assert_eq!(app.get("/api/users/me", Some(&jane.access)).await.status(), 200);
    assert_eq!(app.customer("john").await.user["username"], "john");
    // Revocations are kept in the database, not the cache: logout works, and its token is
    // refused at once, through the outage and after the cache comes back empty.
    let res = app.post("/api/auth/logout", &json!({"refresh_token": jane.refresh}), Some(&jane.access)).await;
    assert_eq!(res.status(), 204);
    let res = app.get("/api/users/me", Some(&jane.access)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await["detail"], "the access token has been revoked");
    redis.resume().await; // empty: the test server keeps nothing across a restart
    let john = app.customer("johnny").await;
    assert_eq!(app.get("/api/users/me", Some(&john.access)).await.status(), 200);
    assert_eq!(app.get("/api/users/me", Some(&jane.access)).await.status(), 401);
}

#[tokio::test]
async fn a_session_revoked_before_a_restart_stays_refused_by_the_new_process() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;
    let res = app.post("/api/auth/logout", &json!({"refresh_token": jane.refresh}), Some(&jane.access)).await;
    assert_eq!(res.status(), 204);
    // A process started after the logout never heard it announced: it loads the revoked
    // sessions from the database before it serves.
    let fresh = app.replica().await;
    assert_eq!(fresh.get("/api/users/me", Some(&jane.access)).await.status(), 401);
    let john = app.customer("john").await;
    assert_eq!(fresh.get("/api/users/me", Some(&john.access)).await.status(), 200);
}
