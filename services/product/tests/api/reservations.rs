use common::contracts::topic::ORDER as ORDER_TOPIC;
use common::events::{self, Delivery, Envelope};
use common::testing::created_or_conflict;
use product::events::OrderEvents;
use product::steps::cache::CatalogCache;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, problem, validation};

#[tokio::test]
async fn fifty_concurrent_reservations_for_ten_units_sell_exactly_ten() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"stock": 10})).await;
    let id = product["id"].as_str().unwrap();
    let outcomes = futures::future::join_all(
        (0..50).map(|_| app.reserve(Uuid::now_v7(), json!([{"product_id": id, "quantity": 1}]))),
    )
    .await;
    assert_eq!(created_or_conflict(outcomes, "insufficient_stock").await.len(), 10);
    assert_eq!(app.stock_of(id).await, 0);
    assert_eq!(app.json(&format!("/api/products/{id}")).await["stock"], 0, "the cache shows it too");
}

#[tokio::test]
async fn a_reservation_returns_prices_and_a_retry_reserves_nothing_more() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let desk = app.product(category, json!({"name": "Desk", "price": "120.50", "stock": 5})).await;
    let lamp = app.product(category, json!({"name": "Lamp", "price": "30", "stock": 5})).await;
    let (desk_id, lamp_id) = (desk["id"].as_str().unwrap(), lamp["id"].as_str().unwrap());
    let order = Uuid::now_v7();
    let items = json!([{"product_id": desk_id, "quantity": 2}, {"product_id": lamp_id, "quantity": 1}]);

    let res = app.reserve(order, items.clone()).await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["status"], "reserved");
    assert_eq!(first["order_id"], order.to_string());
    let lines = first["items"].as_array().unwrap();
    let desk_line = lines.iter().find(|l| l["product_id"] == desk_id).unwrap();
    assert_eq!(
        desk_line,
        &json!({"product_id": desk_id, "name": "Desk", "quantity": 2, "unit_price": "120.50", "currency": "USD"})
    );

    let replay = app.reserve(order, items).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(app.stock_of(desk_id).await, 3);
    assert_eq!(app.stock_of(lamp_id).await, 4);
}

#[tokio::test]
async fn a_reservation_that_fails_on_its_last_item_reserves_nothing() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let mut ids = Vec::new();
    for stock in [5, 5, 1] {
        ids.push(app.product(category, json!({"stock": stock})).await["id"].as_str().unwrap().to_owned());
    }
    // Sorted by id, the scarce product is locked last.
    let scarce = ids[2].clone();
    let items: Vec<Value> = ids.iter().map(|id| json!({"product_id": id, "quantity": 2})).collect();
    let res = app.reserve(Uuid::now_v7(), json!(items)).await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        problem(res).await,
        expected(409, "insufficient_stock", "Insufficient stock", Some(&format!("only 1 left of product {scarce}")))
    );
    for (id, stock) in ids.iter().zip([5, 5, 1]) {
        assert_eq!(app.stock_of(id).await, stock, "nothing reserved");
    }
    let reservations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM catalog.reservations").fetch_one(&app.db).await.unwrap();
    assert_eq!(reservations, 0);
}

#[tokio::test]
async fn bad_reservation_requests_are_422() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let id = app.product(category, json!({})).await["id"].as_str().unwrap().to_owned();
    let res = app.reserve(Uuid::now_v7(), json!([])).await;
    assert_eq!(problem(res).await, validation(json!({"items": ["must contain at least one item"]})));
    let res = app
        .reserve(Uuid::now_v7(), json!([{"product_id": id, "quantity": 1}, {"product_id": id, "quantity": 0}]))
        .await;
    assert_eq!(problem(res).await, validation(json!({"items[1].quantity": ["must be between 1 and 10000"]})));
    let res = app.reserve(Uuid::now_v7(), json!([{"product_id": Uuid::now_v7(), "quantity": 1}])).await;
    assert_eq!(res.status(), 422);
    let token = app.shared.auth.service_token("order").unwrap();
    let res = app.server.post("/internal/reservations", &json!({"items": []}), Some(&token)).await;
    assert_eq!(problem(res).await, validation(json!({"order_id": ["is required"]})));
}

#[tokio::test]
async fn only_services_may_reserve() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let id = app.product(category, json!({"stock": 10})).await["id"].as_str().unwrap().to_owned();
    let body = json!({"order_id": Uuid::now_v7(), "items": [{"product_id": id, "quantity": 5}]});
    for token in [None, Some(app.customer.as_str()), Some(app.admin.as_str()), Some("not.a.token")] {
        let res = app.server.post("/internal/reservations", &body, token).await;
        assert_eq!(res.status(), 401, "{token:?}");
        assert_eq!(
            problem(res).await,
            expected(401, "unauthorized", "Unauthorized", Some("a valid service token is required"))
        );
    }
    assert_eq!(app.stock_of(&id).await, 10);
}

fn order_event(event_type: &str, order_id: Uuid) -> Envelope {
    Envelope {
        id: Uuid::now_v7(),
        event_type: event_type.into(),
        occurred_at: chrono::Utc::now(),
        aggregate_id: order_id,
        data: json!({"order_id": order_id}),
    }
}

fn handler(app: &TestApp) -> OrderEvents {
    OrderEvents { catalog: CatalogCache::new(app.shared.cache.clone(), app.db.clone()), db: app.db.clone() }
}

#[tokio::test]
async fn a_redelivered_cancellation_releases_once_and_paid_units_come_back_too() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let id = app.product(category, json!({"stock": 10})).await["id"].as_str().unwrap().to_owned();
    let handler = handler(&app);
    let (unpaid, paid) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [unpaid, paid] {
        assert_eq!(app.reserve(order, json!([{"product_id": id, "quantity": 3}])).await.status(), 201);
    }
    assert_eq!(app.json(&format!("/api/products/{id}")).await["stock"], 4);

    let paid_event = order_event("order.paid", paid);
    assert_eq!(events::apply_once(&app.db, &handler, ORDER_TOPIC, &paid_event).await.unwrap(), Delivery::Applied);
    assert_eq!(app.stock_of(&id).await, 4, "paying sells the reserved units; stock is unchanged");

    let cancelled = order_event("order.cancelled", unpaid);
    assert_eq!(events::apply_once(&app.db, &handler, ORDER_TOPIC, &cancelled).await.unwrap(), Delivery::Applied);
    assert_eq!(events::apply_once(&app.db, &handler, ORDER_TOPIC, &cancelled).await.unwrap(), Delivery::Duplicate);
    assert_eq!(app.stock_of(&id).await, 7, "released once");
    assert_eq!(app.json(&format!("/api/products/{id}")).await["stock"], 7, "the cache was invalidated");

    // A cancelled paid order puts its units back as well; a second cancellation (another
    // event id) finds the reservation released and changes nothing.
    for _ in 0..2 {
        let refunded = order_event("order.cancelled", paid);
        assert_eq!(events::apply_once(&app.db, &handler, ORDER_TOPIC, &refunded).await.unwrap(), Delivery::Applied);
    }
    assert_eq!(app.stock_of(&id).await, 10);
    let replay = app.reserve(paid, json!([{"product_id": id, "quantity": 3}])).await;
    assert_eq!(replay.status(), 409, "a released order cannot reserve again");
    assert_eq!(problem(replay).await["code"], "conflict");
}

#[tokio::test]
async fn an_order_that_expired_before_its_reservation_arrived_reserves_nothing() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let id = app.product(category, json!({"stock": 10})).await["id"].as_str().unwrap().to_owned();
    let order = Uuid::now_v7();
    let expired = order_event("order.expired", order);
    events::apply_once(&app.db, &handler(&app), ORDER_TOPIC, &expired).await.unwrap();
    let res = app.reserve(order, json!([{"product_id": id, "quantity": 1}])).await;
    assert_eq!(res.status(), 409);
    assert_eq!(app.stock_of(&id).await, 10);
}
