use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, expected, problem, validation};

#[tokio::test]
async fn a_profile_update_needs_the_current_password() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;

    let res = app.patch("/api/users/me", &json!({"username": "jane2"}), Some(&jane.access)).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await, validation(json!({"current_password": ["is required"]})));

    let res = app
        .patch("/api/users/me", &json!({"username": "jane2", "current_password": "wrong password"}), Some(&jane.access))
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await["code"], "invalid_credentials");
    assert_eq!(
        app.get("/api/users/me", Some(&jane.access)).await.json::<serde_json::Value>().await.unwrap()["username"],
        "jane"
    );
}

#[tokio::test]
async fn reads_after_an_update_see_the_update() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;
    // Warm the cache first, so a stale entry would show.
    assert_eq!(app.get("/api/users/me", Some(&jane.access)).await.status(), 200);

    let res = app
        .patch(
            "/api/users/me",
            &json!({"username": "jane.doe", "email": "jane.doe@example.com", "current_password": PASSWORD}),
            Some(&jane.access),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: serde_json::Value = res.json().await.unwrap();
    assert_eq!(updated["username"], "jane.doe");
    assert_eq!(updated["email"], "jane.doe@example.com");
    assert_eq!(updated["id"], jane.user["id"]);

    let me: serde_json::Value = app.get("/api/users/me", Some(&jane.access)).await.json().await.unwrap();
    assert_eq!(me, updated);
    let admin = app.admin().await;
    let path = format!("/api/users/{}", jane.user["id"].as_str().unwrap());
    let by_admin: serde_json::Value = app.get(&path, Some(&admin.access)).await.json().await.unwrap();
    assert_eq!(by_admin, updated);
    // The new email logs in; the old one no longer exists.
    assert_eq!(app.login("jane.doe@example.com", PASSWORD).await.status(), 200);
    assert_eq!(app.login("jane@example.com", PASSWORD).await.status(), 401);
}

#[tokio::test]
async fn a_new_password_ends_the_other_sessions_but_not_this_one() {
    let app = TestApp::spawn().await;
    let here = app.customer("jane").await;
    let elsewhere = app.session("jane@example.com", PASSWORD).await;

    let res = app
        .patch(
            "/api/users/me",
            &json!({"password": "a brand new secret", "current_password": PASSWORD}),
            Some(&here.access),
        )
        .await;
    assert_eq!(res.status(), 200);

    assert_eq!(app.login("jane@example.com", PASSWORD).await.status(), 401);
    assert_eq!(app.login("jane@example.com", "a brand new secret").await.status(), 200);
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": elsewhere.refresh}), None).await;
    assert_eq!(res.status(), 401, "the other session is over");
    let res = app.post("/api/auth/refresh", &json!({"refresh_token": here.refresh}), None).await;
    assert_eq!(res.status(), 200, "this session goes on");
}

#[tokio::test]
async fn profile_updates_are_validated_and_conflicts_are_409() {
    let app = TestApp::spawn().await;
    app.customer("john").await;
    let jane = app.customer("jane").await;

    let res = app
        .patch(
            "/api/users/me",
            &json!({"username": "x", "email": "bad", "password": "short", "current_password": PASSWORD}),
            Some(&jane.access),
        )
        .await;
    assert_eq!(res.status(), 422);
    let errors = problem(res).await["errors"].clone();
    assert_eq!(errors.as_object().unwrap().keys().collect::<Vec<_>>(), ["email", "password", "username"]);

    let res = app
        .patch("/api/users/me", &json!({"email": "JOHN@example.com", "current_password": PASSWORD}), Some(&jane.access))
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "email_taken");
    let res = app
        .patch("/api/users/me", &json!({"username": "John", "current_password": PASSWORD}), Some(&jane.access))
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "username_taken");

    let res =
        app.patch("/api/users/me", &json!({"role": "admin", "current_password": PASSWORD}), Some(&jane.access)).await;
    assert_eq!(res.status(), 422, "role cannot be assigned");
}

#[tokio::test]
async fn only_admins_read_other_users() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;
    let john = app.customer("john").await;
    let admin = app.admin().await;
    let jane_path = format!("/api/users/{}", jane.user["id"].as_str().unwrap());

    let res = app.get(&jane_path, Some(&john.access)).await;
    assert_eq!(res.status(), 403);
    assert_eq!(problem(res).await, expected(403, "forbidden", "Forbidden", None));
    assert_eq!(app.get(&jane_path, None).await.status(), 401);

    let res = app.get(&jane_path, Some(&admin.access)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap(), jane.user);

    let res = app.get(&format!("/api/users/{}", uuid::Uuid::now_v7()), Some(&admin.access)).await;
    assert_eq!(res.status(), 404);
    assert_eq!(problem(res).await, expected(404, "not_found", "Not found", None));
    let res = app.get("/api/users/not-a-uuid", Some(&admin.access)).await;
    assert_eq!(res.status(), 404);
}
