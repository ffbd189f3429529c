//! `POST /api/orders`: reservation, prices, the cart, idempotency, and no overselling.

use std::sync::Arc;

use common::testing::created_once;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, address, expected, id_of, problem, validation};

#[tokio::test]
async fn an_order_reserves_its_stock_at_the_reserved_prices() {
    let (app, alice) = TestApp::with_customer().await;
    let (desk, lamp) = (app.product("19.99", 10).await, app.product("0.10", 10).await);
    let items = json!([
        {"product_id": desk, "quantity": 2},
        {"product_id": lamp, "quantity": 3},
        {"product_id": desk, "quantity": 1},
    ]);
    let res = app.place(&alice.token, Some(items)).await;
    assert_eq!(res.status(), 201);
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["user_id"], alice.id.to_string());
    assert_eq!(order["total"], "60.27", "3 × 19.99 + 3 × 0.10, in decimal");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["shipping_address"], address());
    let mut items = order["items"].as_array().unwrap().clone();
    items.sort_by_key(|i| i["unit_price"].as_str().unwrap().len());
    assert_eq!(
        items,
        vec![
            json!({"product_id": lamp, "name": "Oak desk", "unit_price": "0.10", "quantity": 3, "line_total": "0.30"}),
            json!({"product_id": desk, "name": "Oak desk", "unit_price": "19.99", "quantity": 3, "line_total": "59.97"}),
        ]
    );
    let created = chrono::DateTime::parse_from_rfc3339(order["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(order["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, chrono::Duration::minutes(15), "ORDER_PAYMENT_TIMEOUT defaults to 15 minutes");
    assert_eq!((app.stock_of(desk).await, app.stock_of(lamp).await), (7, 7));
    let id = id_of(&order);
    assert_eq!(app.reservation(id).await.as_deref(), Some("reserved"));

    // What a client reads back is what it was given.
    let read: Value = app.get(&format!("/api/orders/{id}"), &alice.token).await.json().await.unwrap();
    assert_eq!(read, order);

    // A later price change does not touch the order.
    let products = app.products.as_ref().unwrap();
    products.patch(&format!("/api/products/{desk}"), &json!({"price": "99.00"}), Some(&app.admin)).await;
    let read: Value = app.get(&format!("/api/orders/{id}"), &alice.token).await.json().await.unwrap();
    assert_eq!(read["total"], "60.27");

    let events = app.events().await;
    assert_eq!(events.len(), 1);
    let (kind, aggregate, data) = &events[0];
    assert_eq!((kind.as_str(), *aggregate), ("order.created", id));
    assert_eq!(data["order_id"], id.to_string());
    assert_eq!(data["status"], "pending_payment");
    assert_eq!(data["total"], "60.27");
    assert_eq!(data["items"].as_array().unwrap().len(), 2);
    assert!(app.reservation(id).await.is_some());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM ordering.idempotency_keys WHERE status IS NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0, "the checkout's claim went with the order");
}

#[tokio::test]
async fn ordering_the_cart_empties_the_ordered_lines() {
    let (app, alice) = TestApp::with_customer().await;
    let res = app.place(&alice.token, None).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await, validation(json!({"items": ["the cart is empty and the request names no items"]})));

    let (desk, lamp) = (app.product("20.00", 10).await, app.product("5.00", 10).await);
    for (product, quantity) in [(desk, 2), (lamp, 1)] {
        let path = format!("/api/cart/items/{product}");
        assert_eq!(
            app.send(Method::PUT, &path, Some(&json!({"quantity": quantity})), &alice.token).await.status(),
            200
        );
    }
    let res = app.place(&alice.token, None).await;
    assert_eq!(res.status(), 201);
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["total"], "45.00");
    let cart: Value = app.get("/api/cart", &alice.token).await.json().await.unwrap();
    assert_eq!(cart["items"], json!([]));

    // Naming items leaves the cart alone.
    let path = format!("/api/cart/items/{lamp}");
    app.send(Method::PUT, &path, Some(&json!({"quantity": 1})), &alice.token).await;
    let res = app.place(&alice.token, Some(json!([{"product_id": desk, "quantity": 1}]))).await;
    assert_eq!(res.status(), 201);
    let cart: Value = app.get("/api/cart", &alice.token).await.json().await.unwrap();
    assert_eq!(cart["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_item_out_of_stock_reserves_nothing() {
    let (app, alice) = TestApp::with_customer().await;
    let (plenty, scarce) = (app.product("1.00", 10).await, app.product("1.00", 1).await);
    let items = json!([{"product_id": plenty, "quantity": 3}, {"product_id": scarce, "quantity": 2}]);
    let res = app.place(&alice.token, Some(items)).await;
    assert_eq!(res.status(), 409);
    let body = problem(res).await;
    assert_eq!(body["code"], "insufficient_stock");
    assert_eq!(body["detail"], format!("only 1 left of product {scarce}"));
    assert_eq!((app.stock_of(plenty).await, app.stock_of(scarce).await), (10, 1), "nothing reserved");
    assert_eq!(app.order_count().await, 0);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ordering.idempotency_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0, "a refused checkout leaves nothing to recover");

    let unknown = Uuid::now_v7();
    let lines = json!([
        {"product_id": plenty, "quantity": 1},
        {"product_id": plenty, "quantity": 1},
        {"product_id": unknown, "quantity": 1},
    ]);
    let res = app.place(&alice.token, Some(lines)).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        problem(res).await,
        validation(json!({"items[2].product_id": ["no such product, or it can't be ordered"]})),
        "the error names the line as the client sent it, not as merged"
    );
    assert_eq!(app.stock_of(plenty).await, 10);
}

#[tokio::test]
async fn bad_checkout_input_is_a_clear_4xx() {
    let (app, alice, product) = TestApp::with_product("1.00", 10).await;
    let cases = [
        (json!({"items": [], "shipping_address": address()}), json!({"items": ["must contain at least one item"]})),
        (
            json!({"items": [{"product_id": product, "quantity": 0}], "shipping_address": address()}),
            json!({"items[0].quantity": ["must be between 1 and 100"]}),
        ),
        (
            json!({"items": [{"product_id": product, "quantity": 1}], "shipping_address": {
                "name": "", "line1": "1 Main St", "city": "x", "postal_code": "1", "country": "ZZ"}}),
            json!({
                "shipping_address.name": ["must be 1 to 100 characters"],
                "shipping_address.country": ["must be an ISO 3166-1 alpha-2 code such as \"US\""],
            }),
        ),
    ];
    for (body, errors) in cases {
        let res = app.post("/api/orders", &body, &alice.token).await;
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(problem(res).await, validation(errors));
    }
    let too_many: Vec<Value> = (0..51).map(|_| json!({"product_id": product, "quantity": 1})).collect();
    let res = app.post("/api/orders", &json!({"items": too_many, "shipping_address": address()}), &alice.token).await;
    assert_eq!(res.status(), 422);

    // Clients never send prices, owners or statuses.
    for extra in [json!({"total": "0.01"}), json!({"user_id": Uuid::now_v7()}), json!({"status": "paid"})] {
        let mut body = json!({"items": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let res = app.post("/api/orders", &body, &alice.token).await;
        assert_eq!(res.status(), 422, "{body}");
    }
    let res = app.post("/api/orders", &json!({"items": [{"product_id": product, "quantity": 1, "unit_price": "0.01"}], "shipping_address": address()}), &alice.token).await;
    assert_eq!(res.status(), 422);
    let res = app.post("/api/orders", &json!({"items": [{"product_id": product, "quantity": 1}]}), &alice.token).await;
    assert_eq!(res.status(), 422, "the address is required");
    for (content_type, raw, status) in
        [("application/json", "{\"items\": [", 400), ("text/plain", "{}", 415), ("application/json", "[]", 400)]
    {
        let res = app
            .server
            .client
            .post(app.server.url("/api/orders"))
            .bearer_auth(&alice.token)
            .header("content-type", content_type)
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{content_type} {raw}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    let res = app.server.post("/api/orders", &json!({"shipping_address": address()}), None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.stock_of(product).await, 10);
}

#[tokio::test]
async fn fifty_concurrent_checkouts_for_ten_units_give_exactly_ten_orders() {
    // What is tested is the race for the last units, not timeouts: on a loaded CI machine
    // fifty reservations in a debug build can take longer than the helpers' 1 s, and a
    // checkout cut off by its timeout is only settled later by the recovery job.
    let app = Arc::new(TestApp::spawn_with(&[("DB_MAX_CONNECTIONS", "20"), ("UPSTREAM_TIMEOUT", "10s")]).await);
    let product = app.product("3.00", 10).await;
    let customers: Vec<_> = (0..50).map(|_| app.customer()).collect();
    let attempts = customers.into_iter().map(|customer| {
        let app = app.clone();
        tokio::spawn(async move {
            let res = app.place(&customer.token, Some(json!([{"product_id": product, "quantity": 1}]))).await;
            res.status().as_u16()
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 40, "{statuses:?}");
    assert_eq!(app.stock_of(product).await, 0);
    assert_eq!(app.order_count().await, 10);
    let reserved: i64 = sqlx::query_scalar("SELECT coalesce(sum(quantity), 0) FROM catalog.reservation_items")
        .fetch_one(&app.catalog)
        .await
        .unwrap();
    assert_eq!(reserved, 10);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_order() {
    let (app, alice, product) = TestApp::with_product("2.50", 10).await;
    let body = json!({"items": [{"product_id": product, "quantity": 2}], "shipping_address": address()});
    let first = app.place_with_key(&alice.token, "checkout-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = app.place_with_key(&alice.token, "checkout-1", &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.stock_of(product).await, 8);

    let other = json!({"items": [{"product_id": product, "quantity": 3}], "shipping_address": address()});
    let res = app.place_with_key(&alice.token, "checkout-1", &other).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        problem(res).await,
        expected(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            Some("this Idempotency-Key was used with a different request")
        )
    );

    // Keys are per user: Bob's "checkout-1" is his own.
    let bob = app.customer();
    let res = app.place_with_key(&bob.token, "checkout-1", &body).await;
    assert_eq!(res.status(), 201);
    assert_ne!(id_of(&res.json::<Value>().await.unwrap()), id_of(&first));

    let res = app.place_with_key(&alice.token, &"k".repeat(256), &body).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn the_same_order_in_another_key_order_or_spacing_replays() {
    let (app, alice, product) = TestApp::with_product("2.50", 10).await;
    let raw = |body: String| app.server.post_keyed("/api/orders", &alice.token, "checkout-reordered", body);
    let address =
        r#"{"name":"Ada Lovelace","line1":"1 Main St","city":"Springfield","postal_code":"12345","country":"US"}"#;
    let first =
        raw(format!(r#"{{"items":[{{"product_id":"{product}","quantity":2}}],"shipping_address":{address}}}"#)).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let reordered = format!(
        r#"{{
  "shipping_address": {{"country": "US", "postal_code": "12345", "city": "Springfield",
                        "line1": "1 Main St", "name": "Ada Lovelace"}},
  "items": [ {{ "quantity": 2, "product_id": "{product}" }} ]
}}"#
    );
    let again = raw(reordered).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.stock_of(product).await, 8);
}

#[tokio::test]
async fn eight_concurrent_checkouts_with_one_key_give_one_order() {
    let app = Arc::new(TestApp::spawn_with(&[("DB_MAX_CONNECTIONS", "20")]).await);
    let alice = Arc::new(app.customer());
    let product = app.product("1.00", 100).await;
    let body = Arc::new(json!({"items": [{"product_id": product, "quantity": 1}], "shipping_address": address()}));
    let attempts = (0..8).map(|_| {
        let (app, alice, body) = (app.clone(), alice.clone(), body.clone());
        tokio::spawn(async move { app.place_with_key(&alice.token, "same-key", &body).await })
    });
    created_once(futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect()).await;
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.stock_of(product).await, 99);
}

#[tokio::test]
async fn checkouts_are_limited_per_customer() {
    let app = TestApp::spawn_with(&[("CHECKOUT_RATE_LIMIT", "2")]).await;
    let (alice, bob) = (app.customer(), app.customer());
    let product = app.product("1.00", 100).await;
    let items = json!([{"product_id": product, "quantity": 1}]);
    for left in ["1", "0"] {
        let res = app.place(&alice.token, Some(items.clone())).await;
        assert_eq!(res.status(), 201);
        assert_eq!(
            (
                res.headers()["ratelimit-limit"].to_str().unwrap(),
                res.headers()["ratelimit-remaining"].to_str().unwrap()
            ),
            ("2", left)
        );
    }
    let res = app.place(&alice.token, Some(items.clone())).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(res.headers().contains_key("ratelimit-reset"));
    assert_eq!(problem(res).await["code"], "rate_limited");
    assert_eq!(app.order_count().await, 2, "the refused checkout reserved nothing");
    // Each customer has a budget of their own.
    assert_eq!(app.place(&bob.token, Some(items)).await.status(), 201);
}
