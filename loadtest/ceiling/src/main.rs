//! The machine's own ceiling, for the load tests' ratios: the same axum, tokio and sqlx
//! the services use, built with the same profile, with none of our middleware or domain.
//!
//! - `GET /json`: a fixed JSON body the size of a product;
//! - `POST /tx`: one transaction with one `UPDATE … RETURNING` and one `INSERT`, the least
//!   a checkout must do.
//!
//! `PORT` (default 8090) and `DATABASE_URL` (default the local `shop` database); the tables
//! live in the schema `ceiling`, created at start.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// A product as the API returns one, give or take.
const PRODUCT: &str = r#"{"id":"0193a4c2-7d3e-7000-8000-000000000001","sku":"SKU-0001","name":"Compact oak desk","description":"A compact desk in solid oak, for small rooms and long days.","price":"129.99","currency":"USD","stock":42,"category_id":"0193a4c2-7d3e-7000-8000-000000000002","created_at":"2026-11-01T12:00:00Z","updated_at":"2026-11-01T12:00:00Z"}"#;

/// Rows `POST /tx` decrements, chosen at random so the load spreads like orders do.
const ITEMS: i32 = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8090);
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/shop".into());
    let connections = std::env::var("DB_MAX_CONNECTIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let db = PgPoolOptions::new().max_connections(connections).connect(&url).await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS ceiling;
         DROP TABLE IF EXISTS ceiling.stock, ceiling.orders;
         CREATE TABLE ceiling.stock (id INT PRIMARY KEY, quantity BIGINT NOT NULL);
         CREATE TABLE ceiling.orders (id UUID PRIMARY KEY, item INT NOT NULL, quantity BIGINT NOT NULL,
                                      created_at TIMESTAMPTZ NOT NULL DEFAULT now());",
    )
    .execute(&db)
    .await?;
    sqlx::query("INSERT INTO ceiling.stock SELECT g, 1000000000 FROM generate_series(1, $1) g")
        .bind(ITEMS)
        .execute(&db)
        .await?;
    let app = Router::new().route("/json", get(json)).route("/tx", post(transaction)).with_state(db);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], PRODUCT)
}

async fn transaction(State(db): State<PgPool>) -> Result<impl IntoResponse, StatusCode> {
    let item = rand::random_range(1..=ITEMS);
    let run = async {
        let mut tx = db.begin().await?;
        let left: i64 =
            sqlx::query_scalar("UPDATE ceiling.stock SET quantity = quantity - 1 WHERE id = $1 RETURNING quantity")
                .bind(item)
                .fetch_one(&mut *tx)
                .await?;
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO ceiling.orders (id, item, quantity) VALUES ($1, $2, 1)")
            .bind(id)
            .bind(item)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>((id, left))
    };
    let (id, left) = run.await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let body = format!(r#"{{"id":"{id}","item":{item},"left":{left}}}"#);
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body))
}
