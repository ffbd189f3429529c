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
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200, "a cache outage leaves the service in rotation");
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!((&ready["status"], &ready["checks"]["redis"]), (&json!("degraded"), &json!("down")));
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

#[tokio::test]
async fn catalogue_reads_carry_a_tag_answer_304_to_it_and_a_write_changes_it() {
    let app = TestApp::spawn().await;
    let category = app.category("Desks").await;
    let product = app.product(category, json!({"name": "Desk", "price": "100", "stock": 4})).await;
    let by_id = format!("/api/products/{}", product["id"].as_str().unwrap());
    let listing = format!("/api/products?category_id={category}");
    let client = reqwest::Client::new();
    let get = |path: &str, tag: Option<&str>| {
        let mut request = client.get(app.server.url(path));
        if let Some(tag) = tag {
            request = request.header("if-none-match", tag);
        }
        request.send()
    };
    for path in [by_id.as_str(), listing.as_str(), "/api/categories"] {
        let first = get(path, None).await.unwrap();
        assert_eq!(first.status(), 200, "{path}");
        assert_eq!(first.headers()["cache-control"], "public, max-age=5", "{path}: anonymous reads may be shared");
        let tag = first.headers()["etag"].to_str().unwrap().to_owned();
        // Weak: its gzip and brotli encodings are the same content under one tag.
        assert!(tag.starts_with("W/\"") && tag.ends_with('"'), "{path}: a weak tag, {tag}");
        let again = get(path, Some(&tag)).await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], tag.as_str());
        assert!(again.bytes().await.unwrap().is_empty(), "{path}: a 304 has no body");
        assert_eq!(get(path, Some("\"something else\"")).await.unwrap().status(), 200);
    }
    let tag_of = |res: &reqwest::Response| res.headers()["etag"].to_str().unwrap().to_owned();
    let (product_tag, page_tag) =
        (tag_of(&get(&by_id, None).await.unwrap()), tag_of(&get(&listing, None).await.unwrap()));

    let res = app.server.post(&format!("{by_id}/stock"), &json!({"delta": 1}), Some(&app.admin)).await;
    assert_eq!(res.status(), 200);
    let changed = get(&by_id, Some(&product_tag)).await.unwrap();
    assert_eq!(changed.status(), 200, "the write changed the product's tag");
    assert_ne!(tag_of(&changed), product_tag);
    assert_eq!(changed.json::<Value>().await.unwrap()["stock"], 5);
    let page = get(&listing, Some(&page_tag)).await.unwrap();
    assert_eq!(page.status(), 200, "and the tag of a page that lists it");
    assert_eq!(page.json::<Value>().await.unwrap()["items"][0]["stock"], 5);

    let authenticated = app.server.get(&by_id, Some(&app.customer)).await;
    assert_eq!(
        authenticated.headers()["cache-control"],
        "private, no-cache",
        "a shared cache keeps no answer to a token"
    );
}

#[tokio::test]
async fn a_stock_change_refreshes_the_pages_that_list_the_product_without_retiring_them() {
    let app = TestApp::spawn().await;
    let category = app.category("Lamps").await;
    for n in 0..3 {
        app.product(category, json!({"name": format!("Lamp {n}"), "price": "10", "stock": 5})).await;
    }
    let listing = format!("/api/products?category_id={category}&sort=newest");
    let before = app.json(&listing).await;
    let id = before["items"][1]["id"].as_str().unwrap().to_owned();
    let generation = || async { app.shared.cache.counter("products:listing-generation").await.unwrap() };
    let bumped = generation().await;
    let res = app.reserve(uuid::Uuid::now_v7(), json!([{"product_id": id, "quantity": 2}])).await;
    assert_eq!(res.status(), 201);
    assert_eq!(generation().await, bumped, "5 → 3 units moves the product in no listing");
    let after = app.json(&listing).await;
    assert_eq!(after["items"][1]["stock"], 3, "the page shows the product as it is now");
    assert_eq!(after["items"][0], before["items"][0]);
    let res = app.reserve(uuid::Uuid::now_v7(), json!([{"product_id": id, "quantity": 3}])).await;
    assert_eq!(res.status(), 201);
    assert!(generation().await > bumped, "sold out: in-stock listings change");
}
