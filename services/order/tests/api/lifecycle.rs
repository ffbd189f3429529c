//! Reading orders, and moving them through the status machine: cancel, pay (through the
//! payment service's event), ship, deliver, expire.

use common::testing::eventually;
use std::sync::Arc;

use common::contracts::{PaymentRefunded, PaymentSettled};
use common::events::{Delivery, Envelope, apply_once};
use common::money::Money;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, id_of, problem};

/// A `payment.succeeded` or `payment.failed` as the payment service publishes it.
fn payment_event(kind: &str, order_id: Uuid) -> Envelope {
    let data = PaymentSettled {
        payment_id: Uuid::now_v7(),
        order_id,
        user_id: Uuid::now_v7(),
        amount: Money::parse("1.00").unwrap(),
        currency: "USD".into(),
        failure_code: (kind == "payment.failed").then_some("card_declined".into()),
    };
    envelope(kind, serde_json::to_value(data).unwrap())
}

fn envelope(kind: &str, data: Value) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        event_type: kind.into(),
        occurred_at: chrono::Utc::now(),
        aggregate_id: Uuid::now_v7(),
        data,
    }
}

/// Applies a payment event the way the order service's consumer does.
async fn deliver(app: &TestApp, event: &Envelope) -> Delivery {
    let handler = order::events::PaymentEvents { live: order::live::Live::local() };
    apply_once(&app.db, &handler, common::contracts::topic::PAYMENT, event).await.unwrap()
}

async fn status(app: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM ordering.orders WHERE id = $1").bind(id).fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn orders_are_seen_by_their_owner_and_admins_only() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.customer(), app.customer());
    let product = app.product("1.00", 100).await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await));
    }
    let bobs = id_of(&app.order(&bob.token, json!([{"product_id": product, "quantity": 1}])).await);

    let res = app.get(&format!("/api/orders/{bobs}"), &alice.token).await;
    assert_eq!(res.status(), 404, "another user's order does not exist for you");
    assert_eq!(problem(res).await, expected(404, "not_found", "Not found", None));
    assert_eq!(app.get(&format!("/api/orders/{}", Uuid::now_v7()), &alice.token).await.status(), 404);
    assert_eq!(app.get(&format!("/api/orders/{bobs}"), &app.admin).await.status(), 200);
    let res = app.post(&format!("/api/orders/{bobs}/cancel"), &json!({}), &alice.token).await;
    assert_eq!(res.status(), 404, "nor can you cancel it");
    assert_eq!(status(&app, bobs).await, "pending_payment");

    // Newest first, paged.
    let page: Value = app.get("/api/orders?limit=2", &alice.token).await.json().await.unwrap();
    let ids: Vec<Uuid> = page["items"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(ids, vec![alices[2], alices[1]]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value =
        app.get(&format!("/api/orders?limit=2&cursor={cursor}"), &alice.token).await.json().await.unwrap();
    let ids: Vec<Uuid> = page["items"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(ids, vec![alices[0]]);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["items"][0]["items"][0]["quantity"], 1, "orders come with their lines");

    // Admins see everyone's, or one user's.
    let all: Value = app.get("/api/orders", &app.admin).await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    let only_bob: Value = app.get(&format!("/api/orders?user_id={}", bob.id), &app.admin).await.json().await.unwrap();
    assert_eq!(only_bob["items"].as_array().unwrap().iter().map(id_of).collect::<Vec<_>>(), vec![bobs]);
    let res = app.get(&format!("/api/orders?user_id={}", bob.id), &alice.token).await;
    assert_eq!(res.status(), 403);
    let own: Value = app.get(&format!("/api/orders?user_id={}", alice.id), &alice.token).await.json().await.unwrap();
    assert_eq!(own["items"].as_array().unwrap().len(), 3);

    for bad in ["limit=0", "limit=101", "limit=x", "cursor=garbage", "user_id=nope", "sort=price"] {
        let res = app.get(&format!("/api/orders?{bad}"), &alice.token).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(problem(res).await["code"], "bad_request");
    }
}

#[tokio::test]
async fn cancelling_an_unpaid_order_puts_its_stock_back() {
    let (app, alice, product) = TestApp::with_product("4.00", 5).await;
    let order = app.order(&alice.token, json!([{"product_id": product, "quantity": 2}])).await;
    let id = id_of(&order);
    assert_eq!(app.stock_of(product).await, 3);

    let res = app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await;
    assert_eq!(res.status(), 200);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled.get("expires_at").is_none(), "only unpaid orders expire");
    eventually("the stock to come back", || async { app.stock_of(product).await == 5 }).await;
    assert_eq!(app.reservation(id).await.as_deref(), Some("released"));

    let res = app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        problem(res).await,
        expected(
            409,
            "invalid_state_transition",
            "Invalid state transition",
            Some("an order that is cancelled can't be cancelled")
        )
    );
    let kinds: Vec<String> = app.events().await.into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(kinds, ["order.created", "order.cancelled"]);
    let (_, _, data) = &app.events().await[1];
    assert_eq!(
        data,
        &json!({"order_id": id, "user_id": alice.id, "status": "cancelled", "previous_status": "pending_payment",
                "reason": "customer", "total": "8.00", "currency": "USD"})
    );
}

#[tokio::test]
async fn a_paid_order_ships_and_is_delivered_and_illegal_moves_change_nothing() {
    let (app, alice, product) = TestApp::with_product("1.00", 5).await;
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);

    // Nothing ships before it is paid, and customers never ship.
    let res = app.post(&format!("/api/orders/{id}/ship"), &json!({}), &app.admin).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["detail"], "an order that is pending_payment can't be shipped");
    assert_eq!(app.post(&format!("/api/orders/{id}/ship"), &json!({}), &alice.token).await.status(), 403);
    assert_eq!(app.post(&format!("/api/orders/{id}/deliver"), &json!({}), &app.admin).await.status(), 409);
    assert_eq!(status(&app, id).await, "pending_payment");
    assert_eq!(app.events().await.len(), 1, "a refused move writes no event");

    // A failed payment leaves it payable (the consumer does not even record it); a
    // successful one pays it, once.
    assert_eq!(deliver(&app, &payment_event("payment.failed", id)).await, Delivery::Ignored);
    assert_eq!(status(&app, id).await, "pending_payment");
    let paid = payment_event("payment.succeeded", id);
    assert_eq!(deliver(&app, &paid).await, Delivery::Applied);
    assert_eq!(status(&app, id).await, "paid");
    assert_eq!(deliver(&app, &paid).await, Delivery::Duplicate);
    eventually("the reservation to be committed", || async {
        app.reservation(id).await.as_deref() == Some("committed")
    })
    .await;
    let (kind, _, data) = app.events().await.pop().unwrap();
    assert_eq!(kind, "order.paid");
    assert_eq!(data["payment_id"], paid.data["payment_id"]);
    assert_eq!(data["previous_status"], "pending_payment");

    let order: Value = app.get(&format!("/api/orders/{id}"), &alice.token).await.json().await.unwrap();
    assert_eq!(order["status"], "paid");
    assert!(order.get("expires_at").is_none());
    let res = app.post(&format!("/api/orders/{id}/ship"), &json!({}), &app.admin).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "shipped");
    let res = app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await;
    assert_eq!(res.status(), 409, "a shipped order can't be cancelled");
    let res = app.post(&format!("/api/orders/{id}/deliver"), &json!({}), &app.admin).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "delivered");
    for action in ["ship", "deliver", "cancel"] {
        let res = app.post(&format!("/api/orders/{id}/{action}"), &json!({}), &app.admin).await;
        assert_eq!(res.status(), 409, "{action} after delivery");
    }
    let kinds: Vec<String> = app.events().await.into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(kinds, ["order.created", "order.paid", "order.shipped", "order.delivered"]);
    assert_eq!(app.stock_of(product).await, 4, "sold units stay sold");
}

#[tokio::test]
async fn a_paid_order_can_be_cancelled_and_its_units_go_back() {
    let (app, alice, product) = TestApp::with_product("1.00", 5).await;
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 2}])).await);
    deliver(&app, &payment_event("payment.succeeded", id)).await;
    eventually("the reservation to be committed", || async {
        app.reservation(id).await.as_deref() == Some("committed")
    })
    .await;
    let res = app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &app.admin).await;
    assert_eq!(res.status(), 200);
    eventually("the stock to come back", || async { app.stock_of(product).await == 5 }).await;
    let (kind, _, data) = app.events().await.pop().unwrap();
    assert_eq!(
        (kind.as_str(), data["previous_status"].as_str(), data["reason"].as_str()),
        ("order.cancelled", Some("paid"), Some("admin"))
    );

    // A payment that arrives for a cancelled order does not revive it.
    deliver(&app, &payment_event("payment.succeeded", id)).await;
    assert_eq!(status(&app, id).await, "cancelled");
}

#[tokio::test]
async fn concurrent_moves_of_one_order_cannot_both_win() {
    let app = Arc::new(TestApp::spawn_with(&[("DB_MAX_CONNECTIONS", "20")]).await);
    let alice = Arc::new(app.customer());
    let product = app.product("1.00", 5).await;
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);
    let attempts = (0..8).map(|_| {
        let (app, alice) = (app.clone(), alice.clone());
        tokio::spawn(async move {
            app.send(Method::POST, &format!("/api/orders/{id}/cancel"), Some(&json!({})), &alice.token).await.status()
        })
    });
    let statuses: Vec<u16> =
        futures::future::join_all(attempts).await.into_iter().map(|s| s.unwrap().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "{statuses:?}");
    let cancels = app.events().await.into_iter().filter(|(k, _, _)| k == "order.cancelled").count();
    assert_eq!(cancels, 1);
}

#[tokio::test]
async fn an_unpaid_order_expires_and_releases_its_stock() {
    let app = TestApp::spawn_with(&[("ORDER_PAYMENT_TIMEOUT", "1s")]).await;
    let alice = app.customer();
    let product = app.product("1.00", 5).await;
    let expiring = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 2}])).await);
    let paid = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);
    deliver(&app, &payment_event("payment.succeeded", paid)).await;
    assert_eq!(app.stock_of(product).await, 2);

    eventually("the order to expire", || async { status(&app, expiring).await == "cancelled" }).await;
    eventually("its stock to come back", || async { app.stock_of(product).await == 4 }).await;
    assert_eq!(app.reservation(expiring).await.as_deref(), Some("released"));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(status(&app, paid).await, "paid", "a paid order never expires");
    let expired: Vec<(String, Uuid, Value)> =
        app.events().await.into_iter().filter(|(k, _, _)| k == "order.expired").collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].1, expiring);
    assert_eq!(expired[0].2["reason"], "payment_timeout");
    let res = app.post(&format!("/api/orders/{expiring}/cancel"), &json!({}), &alice.token).await;
    assert_eq!(res.status(), 409);
}

#[tokio::test]
async fn the_payment_service_reads_orders_with_a_service_token_only() {
    let (app, alice, product) = TestApp::with_product("12.34", 5).await;
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 2}])).await);
    let service = app.services.shared.auth.service_token("payment").unwrap();
    let res = app.get(&format!("/internal/orders/{id}"), &service).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"id": id, "user_id": alice.id, "status": "pending_payment", "total": "24.68", "currency": "USD"})
    );
    assert_eq!(app.get(&format!("/internal/orders/{id}"), &alice.token).await.status(), 401);
    assert_eq!(app.get(&format!("/internal/orders/{id}"), &app.admin).await.status(), 401);
    assert_eq!(app.get(&format!("/internal/orders/{}", Uuid::now_v7()), &service).await.status(), 404);
}

/// A `payment.refunded` as the payment service publishes it: `refunded_total` is all the
/// payment has refunded so far.
fn refund_event(order_id: Uuid, amount: &str, refunded_total: &str) -> Envelope {
    let data = PaymentRefunded {
        payment_id: Uuid::now_v7(),
        refund_id: Uuid::now_v7(),
        order_id,
        user_id: Uuid::now_v7(),
        amount: Money::parse(amount).unwrap(),
        refunded_total: Money::parse(refunded_total).unwrap(),
        currency: "USD".into(),
        reason: "admin".into(),
    };
    envelope("payment.refunded", serde_json::to_value(data).unwrap())
}

async fn order_of(app: &TestApp, id: Uuid) -> Value {
    app.get(&format!("/api/orders/{id}"), &app.admin).await.json().await.unwrap()
}

#[tokio::test]
async fn refunds_move_orders_as_the_contract_says() {
    let (app, alice, product) = TestApp::with_product("5.00", 10).await;
    let order = |quantity: i64| app.order(&alice.token, json!([{"product_id": product, "quantity": quantity}]));
    let (partly, fully, shipped) = (id_of(&order(1).await), id_of(&order(2).await), id_of(&order(1).await));
    for id in [partly, fully, shipped] {
        deliver(&app, &payment_event("payment.succeeded", id)).await;
    }
    eventually("the reservations to be committed", || async {
        for id in [partly, fully, shipped] {
            if app.reservation(id).await.as_deref() != Some("committed") {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(app.stock_of(product).await, 6);
    assert_eq!(order_of(&app, partly).await["refunded_total"], "0.00", "nothing refunded yet");

    // A partial refund leaves the status as it is, and is counted.
    assert_eq!(deliver(&app, &refund_event(partly, "1.50", "1.50")).await, Delivery::Applied);
    let seen = order_of(&app, partly).await;
    assert_eq!((seen["status"].as_str(), seen["refunded_total"].as_str()), (Some("paid"), Some("1.50")));
    // Delivered late, an earlier refund never lowers the total.
    deliver(&app, &refund_event(partly, "0.50", "1.00")).await;
    assert_eq!(order_of(&app, partly).await["refunded_total"], "1.50");

    // Refunded in full, a paid order is cancelled and its units go back in stock.
    deliver(&app, &refund_event(fully, "4.00", "4.00")).await;
    deliver(&app, &refund_event(fully, "6.00", "10.00")).await;
    let seen = order_of(&app, fully).await;
    assert_eq!((seen["status"].as_str(), seen["refunded_total"].as_str()), (Some("cancelled"), Some("10.00")));
    eventually("the refunded order's units to come back", || async { app.stock_of(product).await == 8 }).await;
    let cancelled = app.events().await.into_iter().find(|(k, id, _)| k == "order.cancelled" && *id == fully).unwrap();
    assert_eq!(cancelled.2["reason"], "refunded");
    assert_eq!(cancelled.2["previous_status"], "paid");

    // A shipped order refunded in full becomes `refunded`; its units stay sold.
    assert_eq!(app.post(&format!("/api/orders/{shipped}/ship"), &json!({}), &app.admin).await.status(), 200);
    let refunded = refund_event(shipped, "5.00", "5.00");
    deliver(&app, &refunded).await;
    let seen = order_of(&app, shipped).await;
    assert_eq!((seen["status"].as_str(), seen["refunded_total"].as_str()), (Some("refunded"), Some("5.00")));
    assert_eq!(deliver(&app, &refunded).await, Delivery::Duplicate);
    for action in ["ship", "deliver", "cancel"] {
        let res = app.post(&format!("/api/orders/{shipped}/{action}"), &json!({}), &app.admin).await;
        assert_eq!(res.status(), 409, "{action} after a full refund");
    }
    let kinds: Vec<String> =
        app.events().await.into_iter().filter(|(_, id, _)| *id == shipped).map(|(k, _, _)| k).collect();
    assert_eq!(kinds, ["order.created", "order.paid", "order.shipped", "order.refunded"]);
    assert_eq!(app.stock_of(product).await, 8, "a refunded shipment's units stay sold");
}
