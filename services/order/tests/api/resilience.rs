//! When the product service is away, and when a checkout dies half way.

use common::service::Spec as _;
use common::testing::eventually;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, address, id_of, problem};

#[tokio::test]
async fn with_the_product_service_down_checkout_fails_fast_and_recovers_without_a_restart() {
    let mut app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT", "500ms")]).await;
    let alice = app.customer();
    let product = app.product("1.00", 10).await;
    let items = json!([{"product_id": product, "quantity": 1}]);
    let path = format!("/api/cart/items/{product}");
    let res = app.send(reqwest::Method::PUT, &path, Some(&json!({"quantity": 1})), &alice.token).await;
    assert_eq!(res.status(), 200);
    app.stop_products().await;

    let started = Instant::now();
    let res = app.place(&alice.token, Some(items.clone())).await;
    assert_eq!(res.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the timeout: {:?}", started.elapsed());
    let body = problem(res).await;
    assert_eq!(body["code"], "upstream_unavailable");
    assert!(!body.to_string().contains("127.0.0.1"), "no internals in {body}");

    // Consecutive failures open the breaker: then the answer comes at once.
    for _ in 0..4 {
        assert_eq!(app.place(&alice.token, Some(items.clone())).await.status(), 503);
    }
    let started = Instant::now();
    let res = app.place(&alice.token, Some(items.clone())).await;
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "the open breaker answers at once: {:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/api/cart", &alice.token).await.status(), 503, "the cart needs the product service too");

    // It comes back: after the breaker's pause, checkout works again.
    app.restart_products().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let res = app.place(&alice.token, Some(items.clone())).await;
        if res.status() == 201 {
            break;
        }
        assert_eq!(res.status(), 503);
        assert!(Instant::now() < deadline, "checkout never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.stock_of(product).await, 9, "only the successful checkout reserved");
    assert_eq!(app.order_count().await, 1);
}

#[tokio::test]
async fn a_retry_with_the_same_key_finishes_a_checkout_that_failed_half_way() {
    let mut app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT", "500ms")]).await;
    let alice = app.customer();
    let product = app.product("1.00", 10).await;
    let body = json!({"items": [{"product_id": product, "quantity": 2}], "shipping_address": address()});
    app.stop_products().await;
    let res = app.place_with_key(&alice.token, "retry-me", &body).await;
    assert_eq!(res.status(), 503);
    let pending: Uuid = sqlx::query_scalar(
        "SELECT (progress->>'order_id')::uuid FROM ordering.idempotency_keys WHERE key = 'retry-me' AND status IS NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();

    app.restart_products().await;
    let res = app.place_with_key(&alice.token, "retry-me", &body).await;
    assert_eq!(res.status(), 201);
    let order: Value = res.json().await.unwrap();
    assert_eq!(id_of(&order), pending, "the retry finished the checkout it started, under the same order id");
    assert_eq!(app.stock_of(product).await, 8);

    let other = json!({"items": [{"product_id": product, "quantity": 5}], "shipping_address": address()});
    app.stop_products().await;
    assert_eq!(app.place_with_key(&alice.token, "second", &body).await.status(), 503);
    app.restart_products().await;
    let res = app.place_with_key(&alice.token, "second", &other).await;
    assert_eq!(res.status(), 422, "an unfinished checkout's key can't be reused for another request");
    assert_eq!(problem(res).await["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn a_checkout_that_died_after_reserving_is_released() {
    let app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT", "200ms"), ("CHECKOUT_RECOVERY_AFTER", "1s")]).await;
    let alice = app.customer();
    let product = app.product("1.00", 10).await;
    // What a process that crashed mid-checkout leaves: its checkout's claim (on a key of
    // its own, it came without one), and stock reserved under that order id by the
    // product service, but no order.
    let order_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ordering.idempotency_keys (scope, key, fingerprint, claim, running_until, progress)
         VALUES ($1, $2, '', gen_random_uuid(), now(), $3)",
    )
    .bind(alice.id.to_string())
    .bind(format!("\u{1}checkout:{order_id}"))
    .bind(json!({"order_id": order_id, "lines": [{"product_id": product, "quantity": 3}], "from_cart": false}))
    .execute(&app.db)
    .await
    .unwrap();
    let token = app.services.shared.auth.service_token("order").unwrap();
    let products = app.products.as_ref().unwrap();
    let body = json!({"order_id": order_id, "items": [{"product_id": product, "quantity": 3}]});
    assert_eq!(products.post("/internal/reservations", &body, Some(&token)).await.status(), 201);
    assert_eq!(app.stock_of(product).await, 7);

    eventually("the reservation to be released", || async { app.stock_of(product).await == 10 }).await;
    assert_eq!(app.reservation(order_id).await.as_deref(), Some("released"));
    let (kind, aggregate, data) = app.events().await.pop().unwrap();
    assert_eq!((kind.as_str(), aggregate), ("order.cancelled", order_id));
    assert_eq!(data["reason"], "checkout_failed");
    assert_eq!(app.order_count().await, 0);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ordering.idempotency_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0);
    // A reservation for that order arriving late is refused, so nothing stays held.
    assert_eq!(products.post("/internal/reservations", &body, Some(&token)).await.status(), 409);
    assert_eq!(app.stock_of(product).await, 10);
}

#[tokio::test]
async fn configuration_is_checked_at_start() {
    use common::config::Env;
    let bad = [
        ("PRODUCT_SERVICE_URL", "ftp://x", "PRODUCT_SERVICE_URL"),
        ("ORDER_PAYMENT_TIMEOUT", "soon", "ORDER_PAYMENT_TIMEOUT"),
        ("UPSTREAM_TIMEOUT", "0s", "UPSTREAM_TIMEOUT"),
        ("CHECKOUT_RECOVERY_AFTER", "1s", "CHECKOUT_RECOVERY_AFTER"),
    ];
    for (name, value, named) in bad {
        let err = order::Config::from_env(&Env::from_pairs([(name, value)])).unwrap_err();
        assert_eq!(err.name, named, "{name}={value}");
    }
    let config = order::Config::from_env(&Env::default()).unwrap();
    assert_eq!(config.payment_timeout, Duration::from_secs(900));
    assert_eq!(config.product_service_url, "http://127.0.0.1:8082");
}
