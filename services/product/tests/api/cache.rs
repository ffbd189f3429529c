//! Read-after-write through the cache, by id and in listings, with Redis up, with Redis
//! gone, and with the in-process cache.

use common::testing::TestRedis;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// Warms the cache with a product and a listing, writes, and reads both again.
async fn reads_see_every_write(app: &TestApp) {
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"name": "Desk", "price": "100", "stock": 4})).await;
    let id = product["id"].as_str().unwrap().to_owned();
    let by_id = format!("/api/products/{id}");
    let listing = &format!("/api/products?sort=price_asc&in_stock=true&category_id={category}");
    assert_eq!(app.json(&by_id).await["price"], "100.00");
    assert_eq!(app.json(listing).await["items"][0]["price"], "100.00");

    let res = app.server.patch(&by_id, &json!({"price": "80"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.json(&by_id).await["price"], "80.00");
    assert_eq!(app.json(listing).await["items"][0]["price"], "80.00");

    // Stock taken by a reservation shows at once, and so does leaving the in-stock filter.
    let res = app.reserve(uuid::Uuid::now_v7(), json!([{"product_id": id, "quantity": 4}])).await;
    assert_eq!(res.status(), 201);
    assert_eq!(app.json(&by_id).await["stock"], 0);
    assert_eq!(app.json(listing).await["items"], json!([]));

    let second = app.product(category, json!({"name": "Lamp", "price": "10"})).await;
    assert_eq!(app.json(listing).await["items"][0]["id"], second["id"]);

    assert_eq!(app.server.delete(&by_id, Some(&app.admin)).await.status(), 204);
    assert_eq!(app.get(&by_id).await.status(), 404);
    let all: Value = app.json(&format!("/api/products?category_id={category}")).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reads_after_writes_see_them_through_redis() {
    let app = TestApp::spawn().await;
    reads_see_every_write(&app).await;
}

#[tokio::test]
async fn reads_after_writes_see_them_through_the_in_process_cache() {
    let app = TestApp::spawn_with(&[("REDIS_URL", "")]).await;
    reads_see_every_write(&app).await;
}

#[tokio::test]
async fn with_redis_stopped_reads_and_writes_go_on_and_stay_fresh() {
    let mut redis = TestRedis::start().await;
    let app = TestApp::spawn_with(&[("REDIS_URL", &redis.url())]).await;
    let category = app.category("Warm-up").await;
    app.product(category, json!({})).await;
    assert_eq!(app.json("/api/products").await["items"].as_array().unwrap().len(), 1);
    redis.stop();
    assert_eq!(app.get("/ready").await.status(), 503);
    reads_see_every_write(&app).await;
}

#[tokio::test]
async fn unknown_ids_are_404_and_many_concurrent_misses_all_answer() {
    let app = TestApp::spawn().await;
    let missing = format!("/api/products/{}", uuid::Uuid::now_v7());
    assert_eq!(app.get(&missing).await.status(), 404);
    assert_eq!(app.get(&missing).await.status(), 404, "the remembered miss answers the same");
    assert_eq!(app.get("/api/products/not-a-uuid").await.status(), 404);

    let category = app.category("Furniture").await;
    let product = app.product(category, json!({})).await;
    let path = format!("/api/products/{}", product["id"].as_str().unwrap());
    let answers = futures::future::join_all((0..50).map(|_| app.get(&path))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
}
