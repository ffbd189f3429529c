use std::time::{Duration, Instant};

use serde_json::json;
use user::config::{DEV_ADMIN_EMAIL, DEV_ADMIN_PASSWORD};

use crate::helpers::{PASSWORD, TestApp, expected, problem};

#[tokio::test]
async fn login_returns_tokens_and_the_user() {
    let app = TestApp::spawn().await;
    app.register("jane", "jane@example.com").await;
    let res = app.login("JANE@example.com", PASSWORD).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit-limit"], "10");
    assert_eq!(res.headers()["ratelimit-remaining"], "9");
    let tokens: serde_json::Value = res.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(tokens["user"]["username"], "jane");
    assert_eq!(tokens["access_token"].as_str().unwrap().split('.').count(), 3, "a JWT");
    assert!(tokens["refresh_token"].as_str().unwrap().len() >= 43);

    let me = app.get("/api/users/me", tokens["access_token"].as_str()).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<serde_json::Value>().await.unwrap(), tokens["user"]);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_the_same() {
    let app = TestApp::spawn().await;
    app.register("jane", "jane@example.com").await;
    let want = expected(401, "invalid_credentials", "Invalid credentials", Some("the email or password is incorrect"));

    let wrong = app.login("jane@example.com", "not the password").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(problem(wrong).await, want);

    let unknown = app.login("nobody@example.com", PASSWORD).await;
    assert_eq!(unknown.status(), 401);
    assert_eq!(problem(unknown).await, want);

    let malformed = app.login("not an email", PASSWORD).await;
    assert_eq!(malformed.status(), 401);
    assert_eq!(problem(malformed).await, want);
}

#[tokio::test]
async fn unknown_emails_cost_a_password_check_too() {
    // Real bcrypt cost, so the difference between checking and not checking is large.
    let app = TestApp::spawn_with(&[("BCRYPT_COST", "10")]).await;
    app.register("jane", "jane@example.com").await;
    let timed = |email: &'static str| {
        let app = &app;
        async move {
            let started = Instant::now();
            let res = app.login(email, "wrong password").await;
            assert_eq!(res.status(), 401);
            started.elapsed()
        }
    };
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        known = known.min(timed("jane@example.com").await);
        unknown = unknown.min(timed("nobody@example.com").await);
    }
    // Not a speed assertion: a missing bcrypt would make the unknown email many times
    // faster; the same work makes the fastest of each within a factor of two.
    assert!(unknown * 2 > known && known * 2 > unknown, "known {known:?}, unknown {unknown:?}");
}

#[tokio::test]
async fn the_eleventh_attempt_in_a_minute_is_rate_limited() {
    let app = TestApp::spawn().await;
    app.register("jane", "jane@example.com").await;
    for i in 0..10 {
        let res = app.login("jane@example.com", "wrong password").await;
        assert_eq!(res.status(), 401, "attempt {i}");
        assert_eq!(res.headers()["ratelimit-remaining"], (9 - i).to_string().as_str());
    }
    let res = app.login("jane@example.com", PASSWORD).await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(res.headers()["ratelimit-limit"], "10");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_eq!(problem(res).await["code"], "rate_limited");

    // The budget is per email: another account from the same address is unaffected.
    app.register("john", "john@example.com").await;
    assert_eq!(app.login("john@example.com", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn replicas_share_one_login_budget_through_redis() {
    let app = TestApp::spawn().await;
    let replica = app.replica().await;
    app.register("jane", "jane@example.com").await;
    let body = json!({"email": "jane@example.com", "password": "wrong password"});
    for i in 0..10 {
        let server = if i % 2 == 0 { &app.server } else { &replica };
        let res = server.client.post(server.url("/api/auth/login")).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    for server in [&app.server, &replica] {
        let res = server.client.post(server.url("/api/auth/login")).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 429);
    }
}

#[tokio::test]
async fn the_limit_is_configurable_and_works_without_redis() {
    let app = TestApp::spawn_with(&[("REDIS_URL", ""), ("LOGIN_RATE_LIMIT", "3")]).await;
    for _ in 0..3 {
        assert_eq!(app.login("jane@example.com", "whatever1").await.status(), 401);
    }
    let res = app.login("jane@example.com", "whatever1").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn the_first_admin_comes_from_configuration_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    assert_eq!(admin.user["role"], "admin");
    assert_eq!(admin.user["email"], DEV_ADMIN_EMAIL);
    // A second start (a replica, a restart) finds the admin and creates nobody.
    let replica = app.replica().await;
    let res = replica
        .client
        .post(replica.url("/api/auth/login"))
        .json(&json!({"email": DEV_ADMIN_EMAIL, "password": DEV_ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["user"]["id"], admin.user["id"]);
}

#[tokio::test]
async fn many_parallel_logins_all_succeed_without_stalling_other_requests() {
    // A real bcrypt cost, so that the logins really occupy the CPU.
    let app = TestApp::spawn_with(&[("BCRYPT_COST", "8")]).await;
    let users = 200;
    futures::future::join_all((0..users).map(|i| {
        let app = &app;
        async move { assert_eq!(app.register(&format!("user{i}"), &format!("user{i}@example.com")).await.status(), 201) }
    }))
    .await;

    let logins = futures::future::join_all((0..users).map(|i| {
        let app = &app;
        async move { app.login(&format!("user{i}@example.com"), PASSWORD).await.status().as_u16() }
    }));
    let logins_done = std::sync::atomic::AtomicBool::new(false);
    let health = async {
        // While the logins queue for bcrypt, health checks keep being answered: each one
        // completes while logins are still outstanding.
        let mut answered_during_logins = 0;
        for _ in 0..20 {
            let res = app.get("/health", None).await;
            assert_eq!(res.status(), 200);
            if !logins_done.load(std::sync::atomic::Ordering::SeqCst) {
                answered_during_logins += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered_during_logins
    };
    let logins = async {
        let statuses = logins.await;
        logins_done.store(true, std::sync::atomic::Ordering::SeqCst);
        statuses
    };
    let (statuses, answered) = tokio::join!(logins, health);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(answered, 20, "health was answered while the logins were running");
}
