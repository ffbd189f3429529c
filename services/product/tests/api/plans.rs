//! With 100k seeded products, the queries behind a search, a filtered listing and a deep
//! cursor page are served by indexes. (Their timings are printed, not asserted: speed is
//! for the load tests; docs/product-query-plans.md keeps a run's EXPLAIN ANALYZE.)

use chrono::{DateTime, Utc};
use product::domain::{Cursor, Listing, Sort};
use rust_decimal::Decimal;
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::TestApp;

fn listing(sort: Sort) -> Listing {
    Listing {
        q: None,
        category_id: None,
        min_price: None,
        max_price: None,
        in_stock: false,
        sort,
        limit: 20,
        cursor: None,
    }
}

#[tokio::test]
async fn searches_filters_and_deep_pages_use_indexes_at_100k_products() {
    let app = TestApp::spawn().await;
    product::seed::seed(&app.db, 100_000, false).await.unwrap();
    let category: Uuid = sqlx::query_scalar("SELECT id FROM catalog.categories WHERE name = 'Kitchen'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let deep = sqlx::query(
        "SELECT created_at, id FROM catalog.products WHERE deleted_at IS NULL
         ORDER BY created_at DESC, id DESC OFFSET 90000 LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let deep_cursor = Cursor::Newest { created_at: deep.get::<DateTime<Utc>, _>(0), id: deep.get(1) };

    let cases = [
        ("search", Listing { q: Some("walnut desk".into()), ..listing(Sort::Relevance) }),
        (
            "filtered listing",
            Listing {
                category_id: Some(category),
                min_price: Some(Decimal::new(2000, 2)),
                max_price: Some(Decimal::new(20000, 2)),
                in_stock: true,
                ..listing(Sort::PriceAsc)
            },
        ),
        ("deep cursor page", Listing { cursor: Some(deep_cursor), ..listing(Sort::Newest) }),
        ("newest in stock", Listing { in_stock: true, ..listing(Sort::Newest) }),
        ("search by price", Listing { q: Some("ceramic teapot".into()), ..listing(Sort::PriceDesc) }),
    ];
    for (name, listing) in cases {
        let mut query = product::repository::list_query(&listing, "EXPLAIN (ANALYZE, BUFFERS) ");
        let plan: Vec<String> =
            query.build().fetch_all(&app.db).await.unwrap().iter().map(|row| row.get::<String, _>(0)).collect();
        let plan = plan.join("\n");
        eprintln!("--- {name}\n{plan}\n");
        assert!(!plan.contains("Seq Scan on products"), "{name} reads the whole table:\n{plan}");
        assert!(plan.contains("Index") || plan.contains("Bitmap"), "{name} uses no index:\n{plan}");
    }
}
