//! Refunds: by admins, in part or in full, never more than was captured; and automatically,
//! once, when a paid order is cancelled or a payment lands on an order that is over.

use common::testing::eventually;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, problem, validation};

async fn paid(app: &TestApp, price: &str) -> (crate::helpers::Customer, Uuid, Value) {
    let alice = app.customer();
    let (order, total) = app.order(&alice, price, 1).await;
    let res = app.pay(&alice.token, "pay", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 201);
    let payment = res.json().await.unwrap();
    (alice, order, payment)
}

#[tokio::test]
async fn admins_refund_in_parts_never_more_than_was_captured() {
    let app = TestApp::spawn().await;
    let (alice, order, payment) = paid(&app, "10.00").await;
    let path = format!("/api/payments/{}/refunds", payment["id"].as_str().unwrap());
    assert_eq!(app.server.post(&path, &json!({}), Some(&alice.token)).await.status(), 403);

    let res = app.server.post(&path, &json!({"amount": "2.50"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 201);
    let refund: Value = res.json().await.unwrap();
    assert_eq!((refund["amount"].as_str(), refund["status"].as_str()), (Some("2.50"), Some("succeeded")));
    let read: Value = app
        .server
        .get(&format!("/api/payments/{}", payment["id"].as_str().unwrap()), Some(&alice.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "partially_refunded");

    let res = app.server.post(&path, &json!({"amount": "7.51"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await, validation(json!({"amount": ["must not exceed the 7.50 left to refund"]})));
    let res = app.server.post(&path, &json!({"amount": "0.00"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 422);
    let res = app.server.post(&path, &json!({}), Some(&app.admin)).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["amount"], "7.50", "the default is what is left");
    let res = app.server.post(&path, &json!({}), Some(&app.admin)).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["detail"], "the payment is refunded in full already");
    assert_eq!(app.provider_books(order).await, ("10.00".into(), "10.00".into()));
    let refunded: Vec<Value> =
        app.events().await.into_iter().filter(|(k, _)| k == "payment.refunded").map(|(_, d)| d).collect();
    assert_eq!(refunded.len(), 2);
    assert_eq!(refunded[1]["refunded_total"], "10.00");

    let res = app.server.post(&format!("/api/payments/{}/refunds", Uuid::now_v7()), &json!({}), Some(&app.admin)).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_failed_payment_has_nothing_to_refund() {
    let (app, alice, order, total) = TestApp::with_order("4.00", 1).await;
    let res = app.pay(&alice.token, "declined", &TestApp::body(order, &total, "tok_chargeDeclined")).await;
    let payment: Value = res.json().await.unwrap();
    let path = format!("/api/payments/{}/refunds", payment["id"].as_str().unwrap());
    let res = app.server.post(&path, &json!({}), Some(&app.admin)).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["detail"], "a failed payment can't be refunded");
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it_in_full_once() {
    let app = TestApp::spawn().await;
    let (alice, order, payment) = paid(&app, "25.00").await;
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    let res = app.orders.post(&format!("/api/orders/{order}/cancel"), &json!({}), Some(&alice.token)).await;
    assert_eq!(res.status(), 200);
    let id = payment["id"].as_str().unwrap().to_owned();
    eventually("the refund", || async {
        let read: Value =
            app.server.get(&format!("/api/payments/{id}"), Some(&alice.token)).await.json().await.unwrap();
        read["status"] == "refunded"
    })
    .await;
    eventually("the provider to give it back", || async {
        app.provider_books(order).await == ("25.00".into(), "25.00".into())
    })
    .await;

    // Another cancellation event for the order (a redelivery has the same id and is
    // skipped by the inbox; this one is new) finds nothing left to refund.
    app.order_event("order.cancelled", order).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.provider_books(order).await, ("25.00".into(), "25.00".into()), "refunded once");
    let refunds = app.events().await.into_iter().filter(|(k, _)| k == "payment.refunded").count();
    assert_eq!(refunds, 1);
}

#[tokio::test]
async fn an_order_that_is_over_is_not_charged() {
    let (app, alice, order, total) = TestApp::with_order("9.00", 1).await;
    // The order expired and the payment service heard of it, while the order service
    // could still answer `pending_payment` to the check.
    app.order_event("order.expired", order).await;
    eventually("the payment service to close the order", || async { closed(&app, order).await }).await;
    let res = app.pay(&alice.token, "late", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "invalid_state_transition");
    assert_eq!(app.provider_books(order).await, ("0".into(), "0".into()));
}

#[tokio::test]
async fn a_payment_that_succeeds_as_its_order_expires_is_refunded() {
    let (app, alice, order, total) = TestApp::with_order("9.00", 1).await;
    // The provider takes the money but its answer is late: the attempt is still being
    // settled when the order expires.
    let res = app.pay(&alice.token, "race", &TestApp::body(order, &total, "tok_providerTimeout")).await;
    assert_eq!(res.status(), 504);
    app.order_event("order.expired", order).await;
    // Whichever comes first, closing the order or settling the charge, the money goes back.
    eventually("the provider to give it back", || async {
        app.provider_books(order).await == ("9.00".into(), "9.00".into())
    })
    .await;
    assert!(closed(&app, order).await);
    let list: Value =
        app.server.get(&format!("/api/payments?order_id={order}"), Some(&alice.token)).await.json().await.unwrap();
    assert_eq!(list["items"][0]["status"], "refunded");
    let kinds: Vec<String> = app.events().await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["payment.succeeded", "payment.refunded"]);
}

async fn closed(app: &TestApp, order: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM payments.closed_orders WHERE order_id = $1)")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refund_retried_with_its_idempotency_key_is_made_once() {
    let app = TestApp::spawn().await;
    let (_alice, order, payment) = paid(&app, "10.00").await;
    let path = format!("/api/payments/{}/refunds", payment["id"].as_str().unwrap());
    let refund = |body: Value, key: &'static str| app.server.post_keyed(&path, &app.admin, key, body.to_string());
    let first = refund(json!({"amount": "2.50"}), "refund-1").await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    // The same request again, its body's keys in another order and spaced otherwise.
    let again = app.server.post_keyed(&path, &app.admin, "refund-1", "{ \"amount\" : \"2.50\" }").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!((again["id"].clone(), again["status"].clone()), (first["id"].clone(), first["status"].clone()));
    let reused = refund(json!({"amount": "3.00"}), "refund-1").await;
    assert_eq!(reused.status(), 422);
    assert_eq!(problem(reused).await["code"], "idempotency_key_reused");
    assert_eq!(app.provider_books(order).await, ("10.00".into(), "2.50".into()), "refunded once");
    let refunded = app.events().await.into_iter().filter(|(k, _)| k == "payment.refunded").count();
    assert_eq!(refunded, 1);
    // Another key is another refund.
    assert_eq!(refund(json!({"amount": "2.50"}), "refund-2").await.status(), 201);
    assert_eq!(app.provider_books(order).await, ("10.00".into(), "5.00".into()));
}

#[tokio::test]
async fn an_order_refunded_after_delivery_is_not_paid_again() {
    let app = TestApp::spawn().await;
    let (alice, order, payment) = paid(&app, "6.00").await;
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    for step in ["ship", "deliver"] {
        let res = app.orders.post(&format!("/api/orders/{order}/{step}"), &json!({}), Some(&app.admin)).await;
        assert_eq!(res.status(), 200, "{step}");
    }
    let path = format!("/api/payments/{}/refunds", payment["id"].as_str().unwrap());
    assert_eq!(app.server.post(&path, &json!({}), Some(&app.admin)).await.status(), 201);
    eventually("the order to be refunded", || async { app.order_status(order).await == "refunded" }).await;

    // The payment service reads the order's status as the order service names it, the
    // status a refund leaves included.
    let res = app.pay(&alice.token, "again", &TestApp::body(order, "6.00", "tok_visa")).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "already_paid");
    assert_eq!(app.provider_books(order).await, ("6.00".into(), "6.00".into()));
}
