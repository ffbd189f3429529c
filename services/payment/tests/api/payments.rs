//! `POST /api/payments` and reading payments: the provider's answers, the rules, the
//! Idempotency-Key, and a provider that is down or slow.

use common::testing::{created_once, eventually};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, problem, validation};

#[tokio::test]
async fn a_successful_payment_pays_the_order() {
    let (app, alice, order, total) = TestApp::with_order("19.99", 2).await;
    assert_eq!(total, "39.98");
    let res = app.pay(&alice.token, "pay-1", &TestApp::body(order, "39.98", "tok_visa")).await;
    assert_eq!(res.status(), 201);
    let payment: Value = res.json().await.unwrap();
    let id = payment["id"].as_str().unwrap().to_owned();
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["order_id"], order.to_string());
    assert_eq!(payment["user_id"], alice.id.to_string());
    assert_eq!((payment["amount"].as_str(), payment["currency"].as_str()), (Some("39.98"), Some("USD")));
    assert!(payment.get("failure_code").is_none());
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    assert_eq!(app.provider_books(order).await, ("39.98".into(), "0".into()));

    let read: Value = app.server.get(&format!("/api/payments/{id}"), Some(&alice.token)).await.json().await.unwrap();
    assert_eq!(read, payment);
    let list: Value =
        app.server.get(&format!("/api/payments?order_id={order}"), Some(&alice.token)).await.json().await.unwrap();
    assert_eq!(list, json!({"items": [payment], "next_cursor": null}));
    let bob = app.customer();
    assert_eq!(app.server.get(&format!("/api/payments/{id}"), Some(&bob.token)).await.status(), 404);
    let list: Value =
        app.server.get(&format!("/api/payments?order_id={order}"), Some(&bob.token)).await.json().await.unwrap();
    assert_eq!(list["items"], json!([]), "another user's payments are not listed");
    assert_eq!(app.server.get(&format!("/api/payments/{id}"), Some(&app.admin)).await.status(), 200);

    let (kind, data) = app.events().await.pop().unwrap();
    assert_eq!(kind, "payment.succeeded");
    assert_eq!(data["order_id"], order.to_string());
    assert_eq!(data["amount"], "39.98");

    let res = app.pay(&alice.token, "pay-2", &TestApp::body(order, "39.98", "tok_visa")).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await, expected(409, "already_paid", "Already paid", Some("this order is paid already")));
}

#[tokio::test]
async fn a_declined_card_fails_and_the_order_stays_payable() {
    let (app, alice, order, total) = TestApp::with_order("5.00", 1).await;
    for (key, token, code) in
        [("d-1", "tok_chargeDeclined", "card_declined"), ("d-2", "tok_insufficientFunds", "insufficient_funds")]
    {
        let res = app.pay(&alice.token, key, &TestApp::body(order, &total, token)).await;
        assert_eq!(res.status(), 201);
        let payment: Value = res.json().await.unwrap();
        assert_eq!((payment["status"].as_str(), payment["failure_code"].as_str()), (Some("failed"), Some(code)));
    }
    assert_eq!(app.order_status(order).await, "pending_payment");
    let kinds: Vec<String> = app.events().await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["payment.failed", "payment.failed"]);
    let res = app.pay(&alice.token, "d-3", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "succeeded");
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    let page = |query: String| {
        let (app, token) = (&app, &alice.token);
        async move {
            let res = app.server.get(&format!("/api/payments?order_id={order}&{query}"), Some(token)).await;
            res.json::<Value>().await.unwrap()
        }
    };
    let list = page("limit=2".to_owned()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][0]["status"], "succeeded", "newest first");
    let rest = page(format!("cursor={}", list["next_cursor"].as_str().unwrap())).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_the_owner_pays_the_exact_total_of_an_unpaid_order() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.customer(), app.customer());
    let (order, total) = app.order(&alice, "10.00", 3).await;

    let res = app.pay(&bob.token, "b-1", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 404, "another user's order does not exist for you");
    let res = app.pay(&alice.token, "a-0", &TestApp::body(Uuid::now_v7(), &total, "tok_visa")).await;
    assert_eq!(res.status(), 404);
    let res = app.pay(&alice.token, "a-1", &TestApp::body(order, "29.99", "tok_visa")).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        problem(res).await,
        expected(422, "amount_mismatch", "Amount mismatch", Some("the amount must equal the order total, 30.00"))
    );
    let cases = [
        (
            json!({"order_id": order, "amount": "30.00", "currency": "EUR", "method": {"type": "card", "token": "tok_visa"}}),
            json!({"currency": ["must be USD"]}),
        ),
        (
            json!({"order_id": order, "amount": "30.00", "currency": "USD", "method": {"type": "cash", "token": "tok_visa"}}),
            json!({"method.type": ["must be card"]}),
        ),
        (
            json!({"order_id": order, "amount": "30.00", "currency": "USD", "method": {"type": "card", "token": "tok_nope"}}),
            json!({"method.token": ["not a card token the provider knows"]}),
        ),
    ];
    for (n, (body, errors)) in cases.into_iter().enumerate() {
        let res = app.pay(&alice.token, &format!("bad-{n}"), &body).await;
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(problem(res).await, validation(errors));
    }
    for body in [
        json!({"order_id": order, "amount": 30.0, "currency": "USD", "method": {"type": "card", "token": "tok_visa"}}),
        json!({"order_id": order, "amount": "30.00", "currency": "USD", "method": {"type": "card", "token": "tok_visa"}, "status": "succeeded"}),
        json!({"order_id": order, "amount": "30.00", "currency": "USD"}),
    ] {
        assert_eq!(app.pay(&alice.token, "malformed", &body).await.status(), 422, "{body}");
    }
    let res = app.server.post("/api/payments", &TestApp::body(order, &total, "tok_visa"), Some(&alice.token)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(problem(res).await["detail"], "the Idempotency-Key header is required");
    let res = app.server.post("/api/payments", &TestApp::body(order, &total, "tok_visa"), None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.provider_books(order).await.0, "0", "nothing was charged");

    // A cancelled order can't be paid.
    let res = app.orders.post(&format!("/api/orders/{order}/cancel"), &json!({}), Some(&alice.token)).await;
    assert_eq!(res.status(), 200);
    let res = app.pay(&alice.token, "a-2", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "invalid_state_transition");
}

#[tokio::test]
async fn an_idempotency_key_replays_and_is_never_reused_for_another_body() {
    let (app, alice, order, total) = TestApp::with_order("7.00", 1).await;
    let body = TestApp::body(order, &total, "tok_chargeDeclined");
    let first = app.pay(&alice.token, "k", &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app.pay(&alice.token, "k", &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let res = app.pay(&alice.token, "k", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await["code"], "idempotency_key_reused");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments").fetch_one(&app.db).await.unwrap();
    assert_eq!(failed, 1);
}

#[tokio::test]
async fn the_same_payment_in_another_key_order_or_spacing_replays() {
    let (app, alice, order, total) = TestApp::with_order("7.00", 1).await;
    let raw = |body: String| app.server.post_keyed("/api/payments", &alice.token, "pay-reordered", body);
    let first = raw(format!(
        r#"{{"order_id":"{order}","amount":"{total}","currency":"USD","method":{{"type":"card","token":"tok_visa"}}}}"#
    ))
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = raw(format!(
        r#"{{
  "method": {{ "token": "tok_visa", "type": "card" }},
  "currency": "USD",  "amount": "{total}",
  "order_id": "{order}"
}}"#
    ))
    .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments").fetch_one(&app.db).await.unwrap();
    assert_eq!(charged, 1);
}

/// Eight payments for one order of 3.00, sent at once, the `n`th with the key `key(n)`.
async fn eight_at_once(key: fn(usize) -> String) -> (TestApp, Uuid, Vec<reqwest::Response>) {
    let (app, alice, order, total) = TestApp::with_order("3.00", 1).await;
    let body = TestApp::body(order, &total, "tok_visa");
    let (app_ref, token, body_ref) = (&app, alice.token.as_str(), &body);
    let pay = |n| async move { app_ref.pay(token, &key(n), body_ref).await };
    let answers = futures::future::join_all((0..8).map(pay)).await;
    (app, order, answers)
}

#[tokio::test]
async fn eight_concurrent_payments_with_one_key_charge_once() {
    let (app, _, answers) = eight_at_once(|_| "same".to_owned()).await;
    created_once(answers).await;
    let charges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments.provider_charges").fetch_one(&app.db).await.unwrap();
    assert_eq!(charges, 1, "one charge");
}

#[tokio::test]
async fn eight_concurrent_payments_with_different_keys_for_one_order_succeed_once() {
    let (app, order, answers) = eight_at_once(|n| format!("key-{n}")).await;
    let mut answered = Vec::new();
    for res in answers {
        answered.push((res.status().as_u16(), res.json::<Value>().await.unwrap()));
    }
    assert_eq!(answered.iter().filter(|(s, b)| *s == 201 && b["status"] == "succeeded").count(), 1, "{answered:?}");
    assert_eq!(answered.iter().filter(|(s, _)| *s == 409).count(), 7, "{answered:?}");
    assert_eq!(app.provider_books(order).await.0, "3.00", "charged once");
}

/// The answer to a payment while the card provider is down.
fn provider_down() -> Value {
    expected(
        502,
        "upstream_unavailable",
        "Upstream unavailable",
        Some("the card provider is unavailable; nothing was charged"),
    )
}

#[tokio::test]
async fn a_provider_that_is_down_charges_nothing_and_answers_502() {
    let (app, alice, order, total) = TestApp::with_order("8.00", 1).await;
    let res = app.pay(&alice.token, "down", &TestApp::body(order, &total, "tok_providerDown")).await;
    assert_eq!(res.status(), 502);
    // Tried three times first (with jittered pauses between, which may be short).
    let metrics = app.server.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.lines().any(|line| line == "provider_errors_total 3"), "three tries: {metrics}");
    assert_eq!(problem(res).await, provider_down());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0, "no payment, and nothing in the way of paying again");
    assert_eq!(app.provider_books(order).await.0, "0");
    assert!(app.events().await.is_empty());
    let res = app.pay(&alice.token, "up", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 201);
}

/// A counter of the payment service's `/metrics` (0 before its first increment).
async fn counter(app: &TestApp, line_start: &str) -> u64 {
    let metrics = app.server.get("/metrics", None).await.text().await.unwrap();
    metrics.lines().find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_provider_that_keeps_failing_is_cut_off_by_a_breaker_until_a_trial_call_succeeds() {
    let (app, alice, order, total) = TestApp::with_order("8.00", 1).await;
    let calls = || counter(&app, "provider_calls_total");
    // Two payments while the provider is down: the first tries three times, the second
    // twice, and that fifth failure in a row opens the breaker, which keeps the second
    // payment's third try from being sent.
    for key in ["down-1", "down-2"] {
        let res = app.pay(&alice.token, key, &TestApp::body(order, &total, "tok_providerDown")).await;
        assert_eq!(res.status(), 502, "{key}");
    }
    assert_eq!(calls().await, 5, "the breaker opened at the fifth failure in a row");

    // Open: nothing is sent, not even a card the provider would charge; the answer is the
    // provider-down one, at once, with nothing charged and no payment recorded.
    let started = std::time::Instant::now();
    let res = app.pay(&alice.token, "while-open", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 502);
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "no retries: {:?}", started.elapsed());
    assert_eq!(problem(res).await, provider_down());
    assert_eq!(calls().await, 5, "the provider was not called");
    assert_eq!(counter(&app, r#"upstream_rejected_total{upstream="card_provider"}"#).await, 2);
    assert_eq!(app.provider_books(order).await.0, "0");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.payments").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0, "nothing in the way of paying again");

    // A first opening lasts one to two seconds; then one trial call goes through, and the
    // provider, back, answers it: the breaker closes.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let res = app.pay(&alice.token, "trial", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(calls().await, 6);
    assert_eq!(app.provider_books(order).await.0, "8.00");
    // Closed again: the next payment goes straight through.
    let (second, total) = app.order(&alice, "3.00", 1).await;
    let res = app.pay(&alice.token, "closed", &TestApp::body(second, &total, "tok_visa")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(calls().await, 7);
}

#[tokio::test]
async fn a_charge_whose_answer_never_came_is_settled_not_lost() {
    let (app, alice, order, total) = TestApp::with_order("12.00", 1).await;
    let body = TestApp::body(order, &total, "tok_providerTimeout");
    let res = app.pay(&alice.token, "slow", &body).await;
    assert_eq!(res.status(), 504);
    assert_eq!(problem(res).await["code"], "upstream_timeout");
    // The provider did charge; the reconciler finds out and settles the payment.
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    let list: Value =
        app.server.get(&format!("/api/payments?order_id={order}"), Some(&alice.token)).await.json().await.unwrap();
    assert_eq!(list["items"][0]["status"], "succeeded");
    // The client's retry with the same key gets the settled payment.
    let res = app.pay(&alice.token, "slow", &body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["id"], list["items"][0]["id"]);
    assert_eq!(app.provider_books(order).await.0, "12.00", "charged once");
}

#[tokio::test]
async fn payments_are_limited_per_customer() {
    let app = TestApp::spawn_with(&[("PAYMENT_RATE_LIMIT", "2")]).await;
    let (alice, bob) = (app.customer(), app.customer());
    let (order, total) = app.order(&alice, "5.00", 1).await;
    for (key, left) in [("l-1", "1"), ("l-2", "0")] {
        let res = app.pay(&alice.token, key, &TestApp::body(order, &total, "tok_chargeDeclined")).await;
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["ratelimit-remaining"], left);
    }
    let res = app.pay(&alice.token, "l-3", &TestApp::body(order, &total, "tok_visa")).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["ratelimit-limit"], "2");
    assert_eq!(problem(res).await["code"], "rate_limited");
    assert_eq!(app.provider_books(order).await, ("0".into(), "0".into()), "nothing was charged");
    let (other, total) = app.order(&bob, "5.00", 1).await;
    assert_eq!(app.pay(&bob.token, "b-1", &TestApp::body(other, &total, "tok_visa")).await.status(), 201);
}

#[tokio::test]
async fn a_charge_under_way_at_the_request_deadline_is_finished_not_cut_off() {
    // Each provider call waits out PROVIDER_TIMEOUT (300 ms) three times: longer than the
    // deadline.
    let app = TestApp::spawn_with(&[("REQUEST_TIMEOUT", "600ms")]).await;
    let alice = app.customer();
    let (order, total) = app.order(&alice, "5.00", 1).await;
    let body = TestApp::body(order, &total, "tok_providerTimeout");
    let res = app.pay(&alice.token, "deadline", &body).await;
    assert_eq!(res.status(), 503);
    assert_eq!(problem(res).await["code"], "unavailable");
    assert!(!app.shared.requests.is_empty(), "the charge goes on in a task of its own");
    eventually("the charge to finish", || async { app.shared.requests.is_empty() }).await;
    // It went as it would have with the client waiting: charged, then settled.
    eventually("the order to be paid", || async { app.order_status(order).await == "paid" }).await;
    let res = app.pay(&alice.token, "deadline", &body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "succeeded");
    assert_eq!(app.provider_books(order).await.0, "5.00", "charged once");
}
