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

/// Two workers, as on the deployment machine: if a hash ever ran on a worker, requests
/// queued behind it would wait for a whole hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parallel_logins_all_succeed_without_stalling_other_requests() {
    // A production-like bcrypt cost, so each hash takes tens of milliseconds.
    let app = TestApp::spawn_with(&[("BCRYPT_COST", "10")]).await;
    let users = 200;
    futures::future::join_all((0..users).map(|i| {
        let app = &app;
        async move {
            let res = app.register(&format!("user{i}"), &format!("user{i}@example.com")).await;
            assert_eq!(res.status(), 201);
        }
    }))
    .await;

    let started = Instant::now();
    let logins = futures::future::join_all((0..users).map(|i| {
        let app = &app;
        async move {
            let res = app.login(&format!("user{i}@example.com"), PASSWORD).await;
            (res.status().as_u16(), started.elapsed())
        }
    }));
    let health = async {
        let mut latencies = Vec::new();
        for _ in 0..40 {
            let sent = Instant::now();
            assert_eq!(app.get("/health", None).await.status(), 200);
            latencies.push(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies
    };
    let (logins, mut health) = tokio::join!(logins, health);
    let storm = started.elapsed();
    assert!(logins.iter().all(|(status, _)| *status == 200), "every login succeeds");

    // Not a speed assertion but a property: health checks answered while the logins
    // queue for the CPU take a small fraction of the time one hash takes. A hash on an
    // async worker would make them wait for it.
    health.sort_unstable();
    let per_hash = storm / users;
    let median = health[health.len() / 2];
    eprintln!(
        "200 logins in {storm:?} (~{per_hash:?} of CPU each); /health median {median:?}, max {:?}",
        health.last().unwrap()
    );
    assert!(median * 2 < per_hash, "/health median {median:?} vs {per_hash:?} per login");
    assert!(health.len() == 40 && storm > Duration::from_millis(500), "the storm was long enough to overlap");
}

#[tokio::test]
async fn one_address_trying_many_emails_runs_out_of_its_own_budget() {
    let app = TestApp::spawn_with(&[("LOGIN_ADDRESS_RATE_LIMIT", "5")]).await;
    for i in 0..5 {
        let res = app.login(&format!("guess{i}@example.com"), "wrong password").await;
        assert_eq!(res.status(), 401, "attempt {i}");
        assert_eq!(res.headers()["ratelimit-limit"], "5", "the tighter budget is the one told");
        assert_eq!(res.headers()["ratelimit-remaining"], (4 - i).to_string());
    }
    let res = app.login("guess99@example.com", "wrong password").await;
    assert_eq!(res.status(), 429, "a sixth email from the same address");
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_eq!(problem(res).await["code"], "rate_limited");
}

#[tokio::test]
async fn registration_is_limited_per_client_address_across_replicas() {
    let app = TestApp::spawn_with(&[("REGISTRATION_RATE_LIMIT", "4")]).await;
    let replica = app.replica().await;
    for i in 0..4 {
        let server = if i % 2 == 0 { &app.server } else { &replica };
        let body =
            json!({"username": format!("user{i}"), "email": format!("user{i}@example.com"), "password": PASSWORD});
        let res = server.client.post(server.url("/api/auth/register")).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 201, "registration {i}");
        assert_eq!(res.headers()["ratelimit-limit"], "4");
        assert_eq!(res.headers()["ratelimit-remaining"], (3 - i).to_string());
    }
    // A fifth, whichever replica it reaches, is refused.
    let res = app.register("another", "another@example.com").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(problem(res).await["code"], "rate_limited");
    let body = json!({"username": "late", "email": "late@example.com", "password": PASSWORD});
    let res = replica.client.post(replica.url("/api/auth/register")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 429, "the other replica spends from the same budget");
}
