//! Spawns the real product and order services, each on its own port as in production,
//! against one fresh database (a schema each), Redis, and in-process events, with access
//! tokens signed by the same key.

use std::net::SocketAddr;

use axum::Router;
use common::auth::Role;
use common::testing::{Served, TestDb, TestServer, TestServices, with_overrides};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub use common::testing::{expected, problem, validation};

pub struct TestApp {
    /// The order service.
    pub server: TestServer,
    /// The product service it calls.
    pub products: Option<TestServer>,
    products_addr: SocketAddr,
    products_app: Router,
    /// Both services' dependencies and variables.
    pub services: TestServices,
    /// The `ordering` schema, for checks a client cannot make.
    pub db: PgPool,
    /// The `catalog` schema.
    pub catalog: PgPool,
    pub admin: String,
    _database: TestDb,
}

/// A customer: their id and access token.
pub struct Customer {
    pub id: Uuid,
    pub token: String,
}

pub fn address() -> Value {
    json!({"name": "Ada Lovelace", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"})
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let (database, vars) = TestDb::with_vars(&[("UPSTREAM_TIMEOUT", "1s")]).await;
        let services = TestServices::connect(with_overrides(vars, extra)).await;
        let Served { server: products, db: catalog, app: products_app } = services.serve::<product::Config>(&[]).await;
        let products_addr = products.addr;
        let url = format!("http://{products_addr}");
        let Served { server, db, .. } = services.serve::<order::Config>(&[("PRODUCT_SERVICE_URL", &url)]).await;
        let admin = services.shared.auth.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).expect("a token").token;
        Self {
            server,
            products: Some(products),
            products_addr,
            products_app,
            services,
            db,
            catalog,
            admin,
            _database: database,
        }
    }

    /// Another order-service instance on its own port, sharing this one's database, Redis
    /// and product service (a second replica).
    pub async fn replica(&self) -> TestServer {
        // Its own socket hub and Redis subscriber; the same Redis, database and event bus.
        let url = format!("http://{}", self.products_addr);
        self.services.serve::<order::Config>(&[("PRODUCT_SERVICE_URL", &url)]).await.server
    }

    /// Stops the product service, as an outage would.
    pub async fn stop_products(&mut self) {
        if let Some(server) = self.products.take() {
            server.shutdown().await.expect("the product service stops");
        }
    }

    /// Brings the product service back on its port.
    pub async fn restart_products(&mut self) {
        assert!(self.products.is_none(), "the product service is running");
        self.products = Some(TestServer::spawn_at(self.products_addr, self.products_app.clone()).await);
    }

    /// An app and a customer: where most tests start.
    pub async fn with_customer() -> (Self, Customer) {
        let app = Self::spawn().await;
        let alice = app.customer();
        (app, alice)
    }

    /// [`Self::with_customer`] and a product of `stock` units at `price` for her to order.
    pub async fn with_product(price: &str, stock: i64) -> (Self, Customer, Uuid) {
        let (app, alice) = Self::with_customer().await;
        let product = app.product(price, stock).await;
        (app, alice, product)
    }

    pub fn customer(&self) -> Customer {
        let id = Uuid::now_v7();
        let token = self.services.shared.auth.issue(id, Role::Customer, Uuid::now_v7()).expect("a token").token;
        Customer { id, token }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>, token: &str) -> Response {
        self.server.send(method, path, body, Some(token)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.server.get(path, Some(token)).await
    }

    pub async fn post(&self, path: &str, body: &Value, token: &str) -> Response {
        self.server.post(path, body, Some(token)).await
    }

    /// Places an order with `items` (or the cart, for `None`).
    pub async fn place(&self, token: &str, items: Option<Value>) -> Response {
        let mut body = json!({"shipping_address": address()});
        if let Some(items) = items {
            body["items"] = items;
        }
        self.post("/api/orders", &body, token).await
    }

    /// Places an order that must succeed, and returns it.
    pub async fn order(&self, token: &str, items: Value) -> Value {
        let res = self.place(token, Some(items)).await;
        assert_eq!(res.status(), 201, "placing an order");
        res.json().await.unwrap()
    }

    /// POSTs with an `Idempotency-Key`.
    pub async fn place_with_key(&self, token: &str, key: &str, body: &Value) -> Response {
        self.server.post_keyed("/api/orders", token, key, body.to_string()).await
    }

    /// A product in a fresh category, created through the product service.
    pub async fn product(&self, price: &str, stock: i64) -> Uuid {
        let products = self.products.as_ref().expect("the product service is running");
        let name = format!("Category {}", Uuid::now_v7());
        let res = products.post("/api/categories", &json!({"name": name}), Some(&self.admin)).await;
        assert_eq!(res.status(), 201);
        let category: Value = res.json().await.unwrap();
        let body = json!({"name": "Oak desk", "price": price, "stock": stock, "category_id": category["id"]});
        let res = products.post("/api/products", &body, Some(&self.admin)).await;
        assert_eq!(res.status(), 201);
        let product: Value = res.json().await.unwrap();
        product["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn stock_of(&self, product: Uuid) -> i32 {
        sqlx::query_scalar("SELECT stock FROM catalog.products WHERE id = $1")
            .bind(product)
            .fetch_one(&self.catalog)
            .await
            .unwrap()
    }

    /// The reservation status of an order in the product service.
    pub async fn reservation(&self, order_id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM catalog.reservations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.catalog)
            .await
            .unwrap()
    }

    /// The events the order service wrote, oldest first: (type, aggregate id, data).
    pub async fn events(&self) -> Vec<(String, Uuid, Value)> {
        sqlx::query_as("SELECT event_type, aggregate_id, envelope->'data' FROM ordering.outbox ORDER BY seq")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    pub async fn order_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ordering.orders").fetch_one(&self.db).await.unwrap()
    }
}

/// An id as a JSON response holds it.
pub fn id_of(value: &Value) -> Uuid {
    value["id"].as_str().expect("an id").parse().expect("a UUID")
}
