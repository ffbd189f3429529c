//! `/api/cart/*`: lines with the product service's current names and prices, decimal totals.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, problem, validation};

#[tokio::test]
async fn a_cart_shows_current_names_and_prices_with_decimal_totals() {
    let (app, alice) = TestApp::with_customer().await;
    let res = app.get("/api/cart", &alice.token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"items": [], "total": "0.00", "currency": "USD"}));

    let cheap = app.product("0.10", 5).await;
    let desk = app.product("19.99", 5).await;
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{cheap}"), Some(&json!({"quantity": 3})), &alice.token).await;
    assert_eq!(res.status(), 200);
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{desk}"), Some(&json!({"quantity": 2})), &alice.token).await;
    let cart: Value = res.json().await.unwrap();
    assert_eq!(
        cart,
        json!({
            "items": [
                {"product_id": cheap, "name": "Oak desk", "unit_price": "0.10", "quantity": 3, "line_total": "0.30"},
                {"product_id": desk, "name": "Oak desk", "unit_price": "19.99", "quantity": 2, "line_total": "39.98"},
            ],
            "total": "40.28",
            "currency": "USD",
        })
    );

    // Setting a quantity replaces it; a price change shows at once.
    app.send(Method::PUT, &format!("/api/cart/items/{cheap}"), Some(&json!({"quantity": 1})), &alice.token).await;
    let products = app.products.as_ref().unwrap();
    let res = products.patch(&format!("/api/products/{desk}"), &json!({"price": "10.00"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 200);
    let cart: Value = app.get("/api/cart", &alice.token).await.json().await.unwrap();
    assert_eq!(cart["items"][0]["quantity"], 1);
    assert_eq!(cart["items"][1]["unit_price"], "10.00");
    assert_eq!(cart["total"], "20.10");

    // Another customer's cart is their own.
    let bob = app.customer();
    let cart: Value = app.get("/api/cart", &bob.token).await.json().await.unwrap();
    assert_eq!(cart["items"], json!([]));

    let res = app.send(Method::DELETE, &format!("/api/cart/items/{cheap}"), None, &alice.token).await;
    assert_eq!(res.status(), 200);
    let cart: Value = res.json().await.unwrap();
    assert_eq!(cart["items"].as_array().unwrap().len(), 1);
    assert_eq!(cart["total"], "20.00");

    let res = app.send(Method::DELETE, "/api/cart", None, &alice.token).await;
    assert_eq!(res.status(), 204);
    let cart: Value = app.get("/api/cart", &alice.token).await.json().await.unwrap();
    assert_eq!(cart["items"], json!([]));
}

#[tokio::test]
async fn a_deleted_product_leaves_the_cart() {
    let (app, alice) = TestApp::with_customer().await;
    let (kept, deleted) = (app.product("5.00", 5).await, app.product("7.00", 5).await);
    for product in [kept, deleted] {
        let res = app
            .send(Method::PUT, &format!("/api/cart/items/{product}"), Some(&json!({"quantity": 1})), &alice.token)
            .await;
        assert_eq!(res.status(), 200);
    }
    let products = app.products.as_ref().unwrap();
    assert_eq!(products.delete(&format!("/api/products/{deleted}"), Some(&app.admin)).await.status(), 204);
    let cart: Value = app.get("/api/cart", &alice.token).await.json().await.unwrap();
    assert_eq!(cart["items"].as_array().unwrap().len(), 1);
    assert_eq!(cart["items"][0]["product_id"], kept.to_string());
    assert_eq!(cart["total"], "5.00");
}

#[tokio::test]
async fn bad_cart_input_is_a_clear_4xx() {
    let (app, alice, product) = TestApp::with_product("5.00", 5).await;
    let path = format!("/api/cart/items/{product}");
    for quantity in [0, 101, -1] {
        let res = app.send(Method::PUT, &path, Some(&json!({"quantity": quantity})), &alice.token).await;
        assert_eq!(res.status(), 422);
        assert_eq!(problem(res).await, validation(json!({"quantity": ["must be between 1 and 100"]})));
    }
    let res = app.send(Method::PUT, &path, Some(&json!({"quantity": "2"})), &alice.token).await;
    assert_eq!(res.status(), 422);
    let res = app.send(Method::PUT, &path, Some(&json!({"quantity": 1, "price": "0.01"})), &alice.token).await;
    assert_eq!(res.status(), 422, "unknown fields (a price) are refused");

    let missing = uuid::Uuid::now_v7();
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{missing}"), Some(&json!({"quantity": 1})), &alice.token).await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        problem(res).await,
        expected(404, "not_found", "Not found", Some("no such product, or it can't be ordered"))
    );
    let res = app.send(Method::PUT, "/api/cart/items/not-a-uuid", Some(&json!({"quantity": 1})), &alice.token).await;
    assert_eq!(res.status(), 404);

    let res = app.server.get("/api/cart", None).await;
    assert_eq!(res.status(), 401);
    let res = app.server.send(Method::DELETE, "/api/cart", None, Some("not-a-token")).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_cart_holds_at_most_fifty_products() {
    let (app, alice, product) = TestApp::with_product("1.00", 5).await;
    for _ in 0..49 {
        let filler = app.product("1.00", 5).await;
        let res = app
            .send(Method::PUT, &format!("/api/cart/items/{filler}"), Some(&json!({"quantity": 1})), &alice.token)
            .await;
        assert_eq!(res.status(), 200);
    }
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{product}"), Some(&json!({"quantity": 1})), &alice.token).await;
    assert_eq!(res.status(), 200, "the fiftieth fits");
    let other = app.product("1.00", 5).await;
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{other}"), Some(&json!({"quantity": 1})), &alice.token).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await, expected(409, "conflict", "Conflict", Some("the cart holds at most 50 products")));
    let res =
        app.send(Method::PUT, &format!("/api/cart/items/{product}"), Some(&json!({"quantity": 2})), &alice.token).await;
    assert_eq!(res.status(), 200, "changing a line already there is fine");
}

#[tokio::test]
async fn a_change_that_would_take_the_total_past_the_largest_amount_is_not_kept() {
    let (app, alice) = TestApp::with_customer().await;
    let (dear, cheap) = (app.product("9999999999.99", 5).await, app.product("1.00", 5).await);
    let put = |product: Uuid, quantity: i64| put_item(&app, &alice.token, product, quantity);
    assert_eq!(put(cheap, 1).await.status(), 200);
    assert_eq!(put(dear, 1).await.status(), 422, "the total would be 10000000000.99");
    assert_eq!(put(dear, 2).await.status(), 422);
    // Nothing of it was kept: the cart reads as before and still takes changes.
    let res = app.get("/api/cart", &alice.token).await;
    assert_eq!(res.status(), 200);
    let cart: Value = res.json().await.unwrap();
    assert_eq!((cart["items"].as_array().unwrap().len(), cart["total"].as_str()), (1, Some("1.00")), "{cart}");
    assert_eq!(put(cheap, 3).await.status(), 200);
}

async fn put_item(app: &TestApp, token: &str, product: Uuid, quantity: i64) -> reqwest::Response {
    let path = format!("/api/cart/items/{product}");
    app.send(Method::PUT, &path, Some(&json!({"quantity": quantity})), token).await
}
