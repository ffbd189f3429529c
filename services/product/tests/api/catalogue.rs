use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, problem, validation};

#[tokio::test]
async fn categories_are_created_by_admins_and_listed() {
    let app = TestApp::spawn().await;
    let furniture = app.category("Furniture").await;
    let res = app.post_as_admin("/api/categories", &json!({"name": "Desks", "parent_id": furniture})).await;
    assert_eq!(res.status(), 201);
    let desks: Value = res.json().await.unwrap();
    assert_eq!(desks["parent_id"], furniture.to_string());

    let res = app.post_as_admin("/api/categories", &json!({"name": "furniture"})).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "conflict");
    let res = app.post_as_admin("/api/categories", &json!({"name": "Lamps", "parent_id": Uuid::now_v7()})).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(res).await, validation(json!({"parent_id": ["no such category"]})));
    let res = app.post_as_admin("/api/categories", &json!({"name": ""})).await;
    assert_eq!(res.status(), 422);
    let res = app.server.post("/api/categories", &json!({"name": "Toys"}), Some(&app.customer)).await;
    assert_eq!(res.status(), 403);
    assert_eq!(app.server.post("/api/categories", &json!({"name": "Toys"}), None).await.status(), 401);

    let list = app.json("/api/categories").await;
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Desks", "Furniture"]);
}

#[tokio::test]
async fn a_product_has_the_fields_of_the_contract() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"description": "Solid oak", "price": "249.9", "sku": "DESK-1"})).await;
    let mut fields: Vec<&str> = product.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["category_id", "created_at", "currency", "description", "id", "name", "price", "sku", "stock", "updated_at"]
    );
    assert_eq!(product["price"], "249.90");
    assert_eq!(product["currency"], "USD");
    assert_eq!(product["sku"], "DESK-1");
    assert_eq!(product["stock"], 10);
    let fetched = app.json(&format!("/api/products/{}", product["id"].as_str().unwrap())).await;
    assert_eq!(fetched, product);

    let generated = app.product(category, json!({})).await;
    assert!(generated["sku"].as_str().unwrap().starts_with("SKU-"));
    assert_eq!(generated["description"], "");
}

#[tokio::test]
async fn invalid_products_are_422_naming_each_field() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let res = app
        .post_as_admin(
            "/api/products",
            &json!({"name": "", "price": "0", "stock": -1, "category_id": category, "currency": "EUR", "sku": "no spaces"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        problem(res).await,
        validation(json!({
            "name": ["must be 1 to 200 characters"],
            "price": ["must be greater than 0"],
            "stock": ["must be between 0 and 1000000000"],
            "currency": ["must be USD, the only currency sold in"],
            "sku": ["must be 1 to 64 characters of letters, digits, '_', '.' or '-'"],
        }))
    );
    let cases = [
        (json!({"name": "A", "price": 19.99, "stock": 1, "category_id": category}), "price"),
        (json!({"name": "A", "price": "19.999", "stock": 1, "category_id": category}), "price"),
        (json!({"name": "A", "price": "-1", "stock": 1, "category_id": category}), "price"),
        (json!({"name": "A", "price": "1", "stock": 1, "category_id": Uuid::now_v7()}), "category_id"),
        (json!({"name": "A", "price": "1", "stock": 1, "category_id": "nope"}), "category_id"),
        (json!({"name": "A", "price": "1", "stock": 1.5, "category_id": category}), "stock"),
        (json!({"name": "A", "price": "1", "category_id": category}), "stock"),
        (json!({"name": "A", "price": "1", "stock": 1, "category_id": category, "id": Uuid::now_v7()}), "id"),
    ];
    for (body, field) in cases {
        let res = app.post_as_admin("/api/products", &body).await;
        assert_eq!(res.status(), 422, "{body}");
        let errors = problem(res).await["errors"].clone();
        assert!(errors.get(field).is_some(), "{body}: {errors}");
    }

    // Fields of the wrong type, a missing one, an unknown one and a rule broken, in one
    // body: one answer names them all.
    let body = json!({"name": "", "price": 19.99, "stock": "lots", "colour": "red", "sku": "no spaces"});
    let res = app.post_as_admin("/api/products", &body).await;
    assert_eq!(res.status(), 422);
    let errors = problem(res).await["errors"].clone();
    let mut named: Vec<&str> = errors.as_object().unwrap().keys().map(String::as_str).collect();
    named.sort_unstable();
    assert_eq!(named, ["category_id", "colour", "name", "price", "sku", "stock"], "{errors}");
    assert_eq!(errors["category_id"], json!(["is required"]));
    assert_eq!(errors["colour"], json!(["is not a known field"]));
    assert_eq!(errors["name"], json!(["must be 1 to 200 characters"]));
    let path = format!("/api/products/{}", Uuid::now_v7());
    let res = app.server.patch(&path, &json!({"name": "", "stock": "x"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 422);
    let errors = problem(res).await["errors"].clone();
    assert!(errors.get("name").is_some() && errors.get("stock").is_some(), "an update too: {errors}");
}

#[tokio::test]
async fn only_admins_write_the_catalogue() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({})).await;
    let id = product["id"].as_str().unwrap();
    let body = json!({"name": "Mine", "price": "1", "stock": 1, "category_id": category});
    for token in [Some(app.customer.as_str()), None] {
        let want = if token.is_some() { 403 } else { 401 };
        assert_eq!(app.server.post("/api/products", &body, token).await.status(), want);
        assert_eq!(
            app.server.patch(&format!("/api/products/{id}"), &json!({"price": "0.01"}), token).await.status(),
            want
        );
        assert_eq!(app.server.delete(&format!("/api/products/{id}"), token).await.status(), want);
        assert_eq!(
            app.server.post(&format!("/api/products/{id}/stock"), &json!({"delta": 5}), token).await.status(),
            want
        );
    }
    assert_eq!(app.json(&format!("/api/products/{id}")).await, product, "nothing changed");
}

#[tokio::test]
async fn updates_change_only_what_is_sent_and_skus_stay_unique() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let other = app.category("Office").await;
    app.product(category, json!({"sku": "TAKEN"})).await;
    let product = app.product(category, json!({"description": "Keep me"})).await;
    let path = format!("/api/products/{}", product["id"].as_str().unwrap());

    let res = app.server.patch(&path, &json!({"price": "80", "category_id": other}), Some(&app.admin)).await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["price"], "80.00");
    assert_eq!(updated["category_id"], other.to_string());
    assert_eq!(updated["description"], "Keep me");
    assert_eq!(updated["created_at"], product["created_at"]);
    assert_ne!(updated["updated_at"], product["updated_at"]);

    let res = app.server.patch(&path, &json!({"sku": "TAKEN"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await["code"], "conflict");
    let res = app.server.patch(&path, &json!({"price": "1.234"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 422);
    let res =
        app.server.patch(&format!("/api/products/{}", Uuid::now_v7()), &json!({"price": "1"}), Some(&app.admin)).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_deleted_product_disappears_and_cannot_be_ordered() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"sku": "GONE"})).await;
    let id = product["id"].as_str().unwrap();
    let path = format!("/api/products/{id}");
    assert_eq!(app.json("/api/products").await["items"].as_array().unwrap().len(), 1);

    let res = app.server.delete(&path, Some(&app.admin)).await;
    assert_eq!(res.status(), 204);
    let res = app.get(&path).await;
    assert_eq!(res.status(), 404);
    assert_eq!(problem(res).await, expected(404, "not_found", "Not found", None));
    assert_eq!(app.json("/api/products").await["items"], json!([]));
    assert_eq!(app.server.delete(&path, Some(&app.admin)).await.status(), 404);
    let res = app.reserve(Uuid::now_v7(), json!([{"product_id": id, "quantity": 1}])).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        problem(res).await,
        validation(json!({"items[0].product_id": ["no such product, or it can't be ordered"]}))
    );
    // Its SKU is free again.
    app.product(category, json!({"sku": "GONE"})).await;
}

#[tokio::test]
async fn stock_deltas_never_take_stock_below_zero() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    let product = app.product(category, json!({"stock": 3})).await;
    let path = format!("/api/products/{}/stock", product["id"].as_str().unwrap());

    let res = app.post_as_admin(&path, &json!({"delta": 5})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["stock"], 8);
    let res = app.post_as_admin(&path, &json!({"delta": -8})).await;
    assert_eq!(res.json::<Value>().await.unwrap()["stock"], 0);
    let res = app.post_as_admin(&path, &json!({"delta": -1})).await;
    assert_eq!(res.status(), 409);
    let id = product["id"].as_str().unwrap();
    assert_eq!(
        problem(res).await,
        expected(409, "insufficient_stock", "Insufficient stock", Some(&format!("only 0 left of product {id}")))
    );
    for bad in [
        json!({"delta": 0}),
        json!({"delta": 2_000_000_000i64}),
        json!({"delta": i64::MIN}),
        json!({"delta": "5"}),
        json!({}),
    ] {
        assert_eq!(app.post_as_admin(&path, &bad).await.status(), 422, "{bad}");
    }
    let res = app.post_as_admin(&format!("/api/products/{}/stock", Uuid::now_v7()), &json!({"delta": 1})).await;
    assert_eq!(res.status(), 404);
    let res = app.post_as_admin(&path, &json!({"delta": 1_000_000_000})).await;
    assert_eq!(res.status(), 200);
    let res = app.post_as_admin(&path, &json!({"delta": 1})).await;
    assert_eq!(problem(res).await, validation(json!({"delta": ["would take stock past 1000000000"]})));
    app.post_as_admin(&path, &json!({"delta": -1_000_000_000})).await;

    // Concurrent takes of the last units: the database lets exactly the stock through.
    app.post_as_admin(&path, &json!({"delta": 5})).await;
    let take_one = json!({"delta": -1});
    let outcomes = futures::future::join_all((0..20).map(|_| app.post_as_admin(&path, &take_one))).await;
    let ok = outcomes.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 5);
    assert_eq!(app.stock_of(id).await, 0);
}
