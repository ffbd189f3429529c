//! The checkout saga end to end: the user, product, order and payment services as four
//! processes (their own binaries) with a real Kafka-protocol broker, Redis and PostgreSQL.
//! Many customers browse, fill carts, check out, and pay, fail to pay, cancel or let their
//! orders expire, all at once, while an admin ships some and refunds others in full or
//! in part, and the order and payment services are killed (`kill -9`) and restarted. Once everything is quiet, the four invariants of API.md are checked from
//! the databases.

#[allow(dead_code)] // each test uses its own part of the harness
mod support;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use support::Platform;

const CUSTOMERS: usize = 24;
const ROUNDS: usize = 2;
const PRODUCTS: usize = 5;
const STOCK: i64 = 30;

/// What one customer does in one round.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Pay,
    DeclineThenPay,
    Cancel,
    LetExpire,
    PayThenCancel,
    PayWithSlowProvider,
    /// An admin refunds the paid order in full: it is cancelled, its units back in stock.
    PayThenRefund,
    /// An admin refunds a cent of it: it stays paid.
    PayThenRefundPart,
    /// An admin ships it, then refunds it in full: it becomes `refunded`.
    PayShipThenRefund,
}

const PLANS: [Plan; 9] = [
    Plan::Pay,
    Plan::DeclineThenPay,
    Plan::Cancel,
    Plan::LetExpire,
    Plan::PayThenCancel,
    Plan::PayWithSlowProvider,
    Plan::PayThenRefund,
    Plan::PayThenRefundPart,
    Plan::PayShipThenRefund,
];

async fn customer(platform: Arc<Platform>, n: usize, admin: Arc<str>) {
    let p = platform.as_ref();
    let email = format!("customer{n}@example.com");
    let body = json!({"username": format!("customer{n}"), "email": email, "password": "correct horse"});
    let (status, _) = p.send("user", Method::POST, "/api/auth/register", None, None, Some(&body)).await;
    assert!(status == 201 || status == 409, "register: {status}");
    let body = json!({"email": email, "password": "correct horse"});
    let (status, tokens) = p.send("user", Method::POST, "/api/auth/login", None, None, Some(&body)).await;
    assert_eq!(status, 200, "login");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let token = token.as_str();

    for round in 0..ROUNDS {
        let (status, page) = p.send("product", Method::GET, "/api/products?limit=20", None, None, None).await;
        assert_eq!(status, 200);
        let ids: Vec<String> =
            page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
        let picks: Vec<(String, i64)> = {
            let mut rng = rand::rng();
            let lines = rng.random_range(1..=2);
            ids.choose_multiple(&mut rng, lines).map(|id| (id.clone(), rng.random_range(1..=3))).collect()
        };
        for (id, quantity) in &picks {
            let (status, _) = p
                .send(
                    "order",
                    Method::PUT,
                    &format!("/api/cart/items/{id}"),
                    Some(token),
                    None,
                    Some(&json!({"quantity": quantity})),
                )
                .await;
            assert_eq!(status, 200, "add to cart");
        }
        let address = json!({"name": "C", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"});
        let key = format!("checkout-{n}-{round}");
        let (status, order) = p
            .send(
                "order",
                Method::POST,
                "/api/orders",
                Some(token),
                Some(&key),
                Some(&json!({"shipping_address": address})),
            )
            .await;
        if status == 409 && order["code"] == "insufficient_stock" {
            let _ = p.send("order", Method::DELETE, "/api/cart", Some(token), None, None).await;
            continue;
        }
        assert_eq!(status, 201, "checkout: {order}");
        let id = order["id"].as_str().unwrap().to_owned();
        let total = order["total"].as_str().unwrap().to_owned();
        let pay = |card: &'static str, key: String| {
            let body =
                json!({"order_id": id, "amount": total, "currency": "USD", "method": {"type": "card", "token": card}});
            async move { p.send("payment", Method::POST, "/api/payments", Some(token), Some(&key), Some(&body)).await }
        };
        let cancel = || async {
            p.send("order", Method::POST, &format!("/api/orders/{id}/cancel"), Some(token), None, Some(&json!({})))
                .await
        };
        // Pays with a good card; the payment, if it was taken.
        let paid = || async {
            let (status, payment) = pay("tok_visa", format!("pay-{n}-{round}")).await;
            assert!(status == 201 || status == 409, "pay: {status} {payment}");
            (status == 201 && payment["status"] == "succeeded").then(|| payment["id"].as_str().unwrap().to_owned())
        };
        let refund = |payment: String, body: serde_json::Value| {
            let (admin, key) = (admin.clone(), format!("refund-{n}-{round}"));
            async move {
                let path = format!("/api/payments/{payment}/refunds");
                let (status, refund) =
                    p.send("payment", Method::POST, &path, Some(&admin), Some(&key), Some(&body)).await;
                assert_eq!(status, 201, "refund: {refund}");
            }
        };
        match PLANS[(n + round) % PLANS.len()] {
            Plan::Pay => {
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
            }
            Plan::DeclineThenPay => {
                let (status, body) = pay("tok_chargeDeclined", format!("decline-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "decline: {status} {body}");
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
            }
            Plan::Cancel => {
                let (status, body) = cancel().await;
                assert!(status == 200 || status == 409, "cancel: {status} {body}");
            }
            Plan::LetExpire => {}
            Plan::PayThenCancel => {
                let (status, body) = pay("tok_visa", format!("pay-{n}-{round}")).await;
                assert!(status == 201 || status == 409, "pay: {status} {body}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (status, body) = cancel().await;
                assert!(status == 200 || status == 409, "cancel: {status} {body}");
            }
            Plan::PayWithSlowProvider => {
                let (status, body) = pay("tok_providerTimeout", format!("slow-{n}-{round}")).await;
                assert!(matches!(status.as_u16(), 201 | 409 | 504), "slow pay: {status} {body}");
            }
            Plan::PayThenRefund => {
                if let Some(payment) = paid().await {
                    refund(payment, json!({})).await;
                }
            }
            Plan::PayThenRefundPart => {
                if let Some(payment) = paid().await {
                    refund(payment, json!({"amount": "0.01"})).await;
                }
            }
            Plan::PayShipThenRefund => {
                if let Some(payment) = paid().await {
                    // The order is paid once the order service has applied payment.succeeded.
                    let path = format!("/api/orders/{id}/ship");
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    loop {
                        let (status, body) = p.send("order", Method::POST, &path, Some(&admin), None, None).await;
                        if status == 200 {
                            break;
                        }
                        assert!(status == 409 && std::time::Instant::now() < deadline, "ship: {status} {body}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    refund(payment, json!({})).await;
                }
            }
        }
    }
}

/// Kills and restarts services while the customers shop.
async fn chaos(platform: Arc<Platform>) {
    for (delay, name) in [(1500, "order"), (1500, "payment"), (1000, "order")] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let mut processes = platform.processes.lock().await;
        let process = processes.iter_mut().find(|p| p.name == name).unwrap();
        process.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        process.start();
        process.wait_ready(&platform.client).await;
    }
}

#[tokio::test]
async fn the_checkout_saga_keeps_every_invariant_across_restarts() {
    let platform = Arc::new(
        Platform::start(&[
            ("ORDER_PAYMENT_TIMEOUT", "30s"),
            ("UPSTREAM_TIMEOUT", "1s"),
            ("PROVIDER_TIMEOUT", "1s"),
            ("CHECKOUT_RECOVERY_AFTER", "5s"),
        ])
        .await,
    );
    let admin = platform.admin_token().await;
    platform.catalogue(&admin, PRODUCTS, STOCK).await;

    let chaos = tokio::spawn(chaos(platform.clone()));
    let admin: Arc<str> = admin.into();
    let customers: Vec<_> =
        (0..CUSTOMERS).map(|n| tokio::spawn(customer(platform.clone(), n, admin.clone()))).collect();
    for customer in customers {
        customer.await.expect("a customer's journey");
    }
    chaos.await.unwrap();

    let db = PgPool::connect(platform.database.url()).await.unwrap();
    let (busy, found) = support::settle(&db, STOCK, Duration::from_secs(120)).await;
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN o.status = 'cancelled' AND EXISTS (SELECT 1 FROM payments.payments p
                          WHERE p.order_id = o.id AND p.status = 'refunded') THEN 'cancelled and refunded'
                     WHEN o.status = 'cancelled' AND EXISTS (SELECT 1 FROM ordering.outbox e
                          WHERE e.aggregate_id = o.id AND e.event_type = 'order.expired') THEN 'expired'
                     WHEN o.status = 'paid' AND o.refunded_total > 0 THEN 'paid, partly refunded'
                     ELSE o.status END, count(*)
         FROM ordering.orders o GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments WHERE status = 'failed'")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("orders by outcome: {outcomes:?}; declined payments: {failed}");
    assert!(busy.is_empty(), "the platform never became quiet: {busy:?} (logs in {})", platform.logs.display());
    assert!(found.is_empty(), "invariant violations (logs in {}):\n{}", platform.logs.display(), found.join("\n"));
    let count = |outcome: &str| outcomes.iter().find(|(o, _)| o == outcome).map_or(0, |(_, n)| *n);
    for outcome in ["paid", "cancelled", "cancelled and refunded", "expired", "paid, partly refunded", "refunded"] {
        assert!(count(outcome) > 0, "the run drove no {outcome} order: {outcomes:?}");
    }
}
