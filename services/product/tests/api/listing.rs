use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expected, problem};

fn names(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

async fn catalogue(app: &TestApp) -> (Uuid, Uuid) {
    let furniture = app.category("Furniture").await;
    let kitchen = app.category("Kitchen").await;
    app.product(furniture, json!({"name": "Oak desk", "price": "300", "stock": 5, "description": "A sturdy desk"}))
        .await;
    app.product(
        furniture,
        json!({"name": "Pine chair", "price": "45.50", "stock": 0, "description": "Goes with any desk"}),
    )
    .await;
    app.product(kitchen, json!({"name": "Copper kettle", "price": "60", "stock": 7, "description": "Boils water"}))
        .await;
    app.product(kitchen, json!({"name": "Chef's knife", "price": "89.99", "stock": 2, "description": "Sharp"})).await;
    (furniture, kitchen)
}

#[tokio::test]
async fn listings_sort_by_newest_and_price() {
    let app = TestApp::spawn().await;
    catalogue(&app).await;
    assert_eq!(names(&app.json("/api/products").await), ["Chef's knife", "Copper kettle", "Pine chair", "Oak desk"]);
    assert_eq!(
        names(&app.json("/api/products?sort=price_asc").await),
        ["Pine chair", "Copper kettle", "Chef's knife", "Oak desk"]
    );
    assert_eq!(
        names(&app.json("/api/products?sort=price_desc").await),
        ["Oak desk", "Chef's knife", "Copper kettle", "Pine chair"]
    );
    assert_eq!(app.json("/api/products").await["next_cursor"], Value::Null);
}

#[tokio::test]
async fn listings_filter_by_category_price_and_stock() {
    let app = TestApp::spawn().await;
    let (furniture, _) = catalogue(&app).await;
    assert_eq!(names(&app.json(&format!("/api/products?category_id={furniture}")).await), ["Pine chair", "Oak desk"]);
    assert_eq!(
        names(&app.json("/api/products?min_price=45.50&max_price=89.99&sort=price_asc").await),
        ["Pine chair", "Copper kettle", "Chef's knife"]
    );
    assert_eq!(
        names(&app.json("/api/products?in_stock=true&sort=price_asc").await),
        ["Copper kettle", "Chef's knife", "Oak desk"]
    );
    assert_eq!(names(&app.json(&format!("/api/products?category_id={furniture}&in_stock=true")).await), ["Oak desk"]);
    assert_eq!(app.json(&format!("/api/products?category_id={}", Uuid::now_v7())).await["items"], json!([]));
    // A crossed price range matches nothing, as any other filter may.
    assert_eq!(app.json("/api/products?min_price=10&max_price=5").await["items"], json!([]));
    // Without a query, relevance orders nothing: newest first, as by default.
    assert_eq!(names(&app.json("/api/products?sort=relevance").await), names(&app.json("/api/products").await));
}

#[tokio::test]
async fn search_ranks_name_matches_first_and_never_errors() {
    let app = TestApp::spawn().await;
    catalogue(&app).await;
    // "desk" is in the desk's name and in the chair's description: the name weighs more.
    assert_eq!(names(&app.json("/api/products?q=desk").await), ["Oak desk", "Pine chair"]);
    // Stemming: "desks" finds "desk"; filters and other sorts combine with q.
    assert_eq!(names(&app.json("/api/products?q=desks&sort=price_asc").await), ["Pine chair", "Oak desk"]);
    assert_eq!(names(&app.json("/api/products?q=desk&in_stock=true").await), ["Oak desk"]);
    for q in [
        "'",
        "\"",
        "a & b | !c",
        "(((",
        ":*",
        "desk' OR 1=1; DROP TABLE products; --",
        "ünïcödé",
        "\\",
        "%",
        "-",
        "the",
    ] {
        let res = app.server.client.get(app.server.url("/api/products")).query(&[("q", q)]).send().await.unwrap();
        assert_eq!(res.status(), 200, "q={q}");
    }
    assert_eq!(names(&app.json("/api/products?q=kettel").await), Vec::<String>::new(), "a typo finds nothing, quietly");
    assert_eq!(app.json("/api/products").await["items"].as_array().unwrap().len(), 4, "nothing was dropped");
}

#[tokio::test]
async fn cursors_walk_every_product_once_even_while_products_are_added() {
    let app = TestApp::spawn().await;
    let category = app.category("Furniture").await;
    for i in 0..7 {
        app.product(category, json!({"name": format!("Item {i}"), "price": format!("{}.00", 10 + i % 3)})).await;
    }
    for sort in ["newest", "price_asc", "price_desc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/api/products?limit=2&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = app.json(&path).await;
            seen.extend(names(&page));
            pages += 1;
            if pages == 2 {
                // Rows inserted between pages do not shift the pages still to come.
                app.product(category, json!({"name": format!("Late {sort}"), "price": "5.00"})).await;
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let originals: Vec<&String> = seen.iter().filter(|n| n.starts_with("Item")).collect();
        assert_eq!(originals.len(), 7, "{sort}: {seen:?}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{sort}: nothing twice: {seen:?}");
    }
}

#[tokio::test]
async fn bad_listing_parameters_are_400_saying_what_is_wrong() {
    let app = TestApp::spawn().await;
    let newest_cursor = {
        let category = app.category("Furniture").await;
        for _ in 0..3 {
            app.product(category, json!({})).await;
        }
        app.json("/api/products?limit=1").await["next_cursor"].as_str().unwrap().to_owned()
    };
    let cases = [
        ("limit=0", "limit must be a whole number from 1 to 100"),
        ("limit=101", "limit must be a whole number from 1 to 100"),
        ("limit=ten", "limit must be a whole number from 1 to 100"),
        ("sort=cheapest", "sort must be relevance, newest, price_asc or price_desc"),
        ("cursor=garbage", "the cursor is not valid for this listing"),
        (&format!("cursor={newest_cursor}&sort=price_asc"), "the cursor is not valid for this listing"),
        ("min_price=cheap", "min_price must be a decimal amount such as \"19.99\""),
        ("in_stock=maybe", "in_stock must be true or false"),
        ("category_id=furniture", "category_id must be a UUID"),
        ("q=desk%00", "query parameters must not contain the NUL character (%00)"),
    ];
    for (query, detail) in cases {
        let res = app.get(&format!("/api/products?{query}")).await;
        assert_eq!(res.status(), 400, "{query}");
        assert_eq!(problem(res).await, expected(400, "bad_request", "Bad request", Some(detail)), "{query}");
    }
    let res = app.get("/api/products?colour=red").await;
    assert_eq!(res.status(), 400);
    assert_eq!(problem(res).await["code"], "bad_request");
}
