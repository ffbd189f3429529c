use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, expected, problem, session_from};

fn unauthorized(detail: &str) -> serde_json::Value {
    expected(401, "unauthorized", "Unauthorized", Some(detail))
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_stops_working() {
    let app = TestApp::spawn().await;
    let first = app.customer("jane").await;

    let res = app.post("/api/auth/refresh", &json!({"refresh_token": first.refresh}), None).await;
    assert_eq!(res.status(), 200);
    let second = session_from(res.json().await.unwrap());
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(second.user["id"], first.user["id"]);
    assert_eq!(app.get("/api/users/me", Some(&second.access)).await.status(), 200);

    // The rotated token is refused, and presenting it again revokes the whole family,
    // so the token issued in its place stops working too (theft detection).
    let replay = app.post("/api/auth/refresh", &json!({"refresh_token": first.refresh}), None).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(problem(replay).await, unauthorized("the refresh token is revoked"));
    let successor = app.post("/api/auth/refresh", &json!({"refresh_token": second.refresh}), None).await;
    assert_eq!(successor.status(), 401);

    // Other sessions of the same user are not affected.
    let other = app.session("jane@example.com", crate::helpers::PASSWORD).await;
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": other.refresh}), None).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_rotate_it_once() {
    let app = TestApp::spawn().await;
    let session = app.customer("jane").await;
    let body = json!({"refresh_token": session.refresh});
    let statuses = futures::future::join_all((0..8).map(|_| app.post("/api/auth/refresh", &body, None))).await;
    let ok = statuses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 1, "exactly one refresh wins");
    assert!(statuses.iter().all(|r| r.status() == 200 || r.status() == 401));
}

#[tokio::test]
async fn unknown_and_malformed_refresh_tokens_are_401_or_422() {
    let app = TestApp::spawn().await;
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": "made-up"}), None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await, unauthorized("the refresh token is not recognised"));
    let res = app.post("/api/auth/refresh", &json!({"token": "x"}), None).await;
    assert_eq!(res.status(), 422);
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused() {
    let app = TestApp::spawn_with(&[("REFRESH_TOKEN_TTL", "1s")]).await;
    let session = app.customer("jane").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": session.refresh}), None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await, unauthorized("the refresh token is expired"));
}

#[tokio::test]
async fn logout_kills_the_access_and_refresh_token_at_once() {
    let app = TestApp::spawn().await;
    let session = app.customer("jane").await;
    let replica = app.replica().await;

    let res = app.post("/api/auth/logout", &json!({"refresh_token": session.refresh}), Some(&session.access)).await;
    assert_eq!(res.status(), 204);
    assert_eq!(res.content_length(), Some(0));

    let res = app.get("/api/users/me", Some(&session.access)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await, unauthorized("the access token has been revoked"));
    // Revocations are shared: another replica refuses the token too.
    let res = replica.client.get(replica.url("/api/users/me")).bearer_auth(&session.access).send().await.unwrap();
    assert_eq!(res.status(), 401);

    let res = app.post("/api/auth/refresh", &json!({"refresh_token": session.refresh}), None).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn logout_works_without_redis_too() {
    let app = TestApp::spawn_with(&[("REDIS_URL", "")]).await;
    let session = app.customer("jane").await;
    let res = app.post("/api/auth/logout", &json!({"refresh_token": session.refresh}), Some(&session.access)).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get("/api/users/me", Some(&session.access)).await.status(), 401);
}

#[tokio::test]
async fn logout_cannot_revoke_another_users_session() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;
    let mallory = app.customer("mallory").await;
    let res = app.post("/api/auth/logout", &json!({"refresh_token": jane.refresh}), Some(&mallory.access)).await;
    assert_eq!(res.status(), 204);
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": jane.refresh}), None).await;
    assert_eq!(res.status(), 200, "jane's session survives mallory's logout");
}

#[tokio::test]
async fn missing_malformed_and_expired_access_tokens_are_401() {
    let app = TestApp::spawn_with(&[("ACCESS_TOKEN_TTL", "1s")]).await;
    let session = app.customer("jane").await;

    let res = app.get("/api/users/me", None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(problem(res).await, unauthorized("a bearer access token is required"));

    let res =
        app.client().get(app.url("/api/users/me")).header("authorization", "Basic amFuZTpwdw==").send().await.unwrap();
    assert_eq!(res.status(), 401);

    let mut tampered = session.access.clone();
    tampered.insert(tampered.len() - 3, 'x');
    let res = app.get("/api/users/me", Some(&tampered)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await, unauthorized("the access token is invalid"));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let res = app.get("/api/users/me", Some(&session.access)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await, unauthorized("the access token has expired"));
}

#[tokio::test]
async fn tokens_from_another_deployment_are_refused() {
    let ours = TestApp::spawn().await;
    let theirs = TestApp::spawn().await;
    let session = theirs.customer("jane").await;
    let res = ours.get("/api/users/me", Some(&session.access)).await;
    assert_eq!(res.status(), 401);
}
