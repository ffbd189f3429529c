//! The product service's own events, and order events consumed through a real broker.

use std::time::Duration;

use common::events::dead_letter_topic;
use common::testing::{TestBroker, read_topic};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestApp;

#[tokio::test]
async fn catalogue_changes_are_published_and_order_events_settle_reservations_once() {
    let broker = TestBroker::start().await;
    let app = TestApp::spawn_with(&[("KAFKA_BROKERS", &broker.brokers())]).await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"stock": 5})).await;
    let id = product["id"].as_str().unwrap().to_owned();
    let path = format!("/api/products/{id}");
    app.server.patch(&path, &json!({"price": "9.99"}), Some(&app.admin)).await;
    app.post_as_admin(&format!("{path}/stock"), &json!({"delta": 1})).await;

    let records = read_topic(&broker.brokers(), "product.events", 3, Duration::from_secs(30)).await;
    let types: Vec<String> = records.iter().map(|r| r.json()["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types, ["product.created", "product.updated", "product.stock_changed"]);
    assert!(records.iter().all(|r| r.key.as_deref() == Some(id.as_str())), "keyed by product id, so in order");
    assert_eq!(records[0].json()["data"]["price"], "100.00");
    assert_eq!(records[1].json()["data"]["product"]["price"], "9.99");
    assert_eq!(records[2].json()["data"]["stock"], 6);

    // The order service's cancellation arrives twice (a redelivery): stock comes back once.
    let order = Uuid::now_v7();
    assert_eq!(app.reserve(order, json!([{"product_id": id, "quantity": 4}])).await.status(), 201);
    let Some(kafka) = (match &app.shared.events {
        common::events::Events::Kafka(kafka) => Some(kafka.clone()),
        common::events::Events::InProcess(_) => None,
    }) else {
        panic!("the app runs with Kafka");
    };
    let envelope = json!({
        "id": Uuid::now_v7(), "type": "order.cancelled", "occurred_at": chrono::Utc::now(),
        "aggregate_id": order, "data": {"order_id": order},
    });
    let bytes = serde_json::to_vec(&envelope).unwrap();
    for _ in 0..2 {
        kafka.publish("order.events", &order.to_string(), &bytes, rdkafka_headers()).await.unwrap();
    }
    for _ in 0..200 {
        if app.stock_of(&id).await == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.stock_of(&id).await, 6, "released once");
    assert_eq!(app.json(&path).await["stock"], 6);
    let dead = read_topic(&broker.brokers(), &dead_letter_topic("order.events"), 0, Duration::from_secs(2)).await;
    assert!(dead.is_empty(), "{dead:?}");
}

fn rdkafka_headers() -> common::events::kafka::OwnedHeaders {
    common::events::kafka::OwnedHeaders::new()
}
