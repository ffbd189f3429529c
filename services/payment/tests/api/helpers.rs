//! Spawns the product, order and payment services, each on its own port, against one
//! fresh database, Redis and in-process events, with tokens signed by the same key.

use common::auth::Role;
use common::http::Shared;
use common::testing::{TestDb, TestServer, TestServices, with_overrides};
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub use common::testing::{expected, problem, validation};

pub struct TestApp {
    pub server: TestServer,
    pub orders: TestServer,
    pub products: TestServer,
    pub shared: Shared,
    /// The one test database (every schema).
    pub db: PgPool,
    pub admin: String,
    _database: TestDb,
}

pub struct Customer {
    pub id: Uuid,
    pub token: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let (database, vars) = TestDb::with_vars(&[("UPSTREAM_TIMEOUT", "1s"), ("PROVIDER_TIMEOUT", "300ms")]).await;
        let services = TestServices::connect(with_overrides(vars, extra)).await;
        let products = services.serve::<product::Config>(&[]).await.server;
        let url = format!("http://{}", products.addr);
        let orders = services.serve::<order::Config>(&[("PRODUCT_SERVICE_URL", &url)]).await.server;
        let url = format!("http://{}", orders.addr);
        let server = services.serve::<payment::Config>(&[("ORDER_SERVICE_URL", &url)]).await.server;
        // A pool outside every service's role, to check what clients can't see.
        let db = PgPool::connect(database.url()).await.unwrap();
        let shared = services.shared;
        let admin = shared.auth.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).unwrap().token;
        Self { server, orders, products, shared, db, admin, _database: database }
    }

    pub fn customer(&self) -> Customer {
        let id = Uuid::now_v7();
        let token = self.shared.auth.issue(id, Role::Customer, Uuid::now_v7()).unwrap().token;
        Customer { id, token }
    }

    /// An app, a customer and her order of `quantity` units at `price`, not yet paid: where
    /// most tests start.
    pub async fn with_order(price: &str, quantity: i64) -> (Self, Customer, Uuid, String) {
        let app = Self::spawn().await;
        let alice = app.customer();
        let (order, total) = app.order(&alice, price, quantity).await;
        (app, alice, order, total)
    }

    /// A product and an order of `quantity` of it at `price`, placed by `customer`.
    pub async fn order(&self, customer: &Customer, price: &str, quantity: i64) -> (Uuid, String) {
        let name = format!("Category {}", Uuid::now_v7());
        let res = self.products.post("/api/categories", &json!({"name": name}), Some(&self.admin)).await;
        let category: Value = res.json().await.unwrap();
        let body = json!({"name": "Lamp", "price": price, "stock": 100, "category_id": category["id"]});
        let product: Value = self.products.post("/api/products", &body, Some(&self.admin)).await.json().await.unwrap();
        let address = json!({"name": "A", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"});
        let body = json!({"items": [{"product_id": product["id"], "quantity": quantity}], "shipping_address": address});
        let res = self.orders.post("/api/orders", &body, Some(&customer.token)).await;
        assert_eq!(res.status(), 201);
        let order: Value = res.json().await.unwrap();
        (order["id"].as_str().unwrap().parse().unwrap(), order["total"].as_str().unwrap().to_owned())
    }

    pub fn body(order_id: Uuid, amount: &str, token: &str) -> Value {
        json!({"order_id": order_id, "amount": amount, "currency": "USD", "method": {"type": "card", "token": token}})
    }

    /// POST /api/payments with an Idempotency-Key.
    pub async fn pay(&self, token: &str, key: &str, body: &Value) -> Response {
        self.server.post_keyed("/api/payments", token, key, body.to_string()).await
    }

    pub async fn order_status(&self, order_id: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM ordering.orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// What the provider charged, and refunded, for an order's payments.
    pub async fn provider_books(&self, order_id: Uuid) -> (String, String) {
        sqlx::query_as(
            "SELECT coalesce(sum(c.amount) FILTER (WHERE c.outcome = 'succeeded'), 0)::text,
                    coalesce((SELECT sum(r.amount) FROM payments.provider_refunds r
                              JOIN payments.payments p ON p.id = r.payment_id WHERE p.order_id = $1), 0)::text
             FROM payments.provider_charges c JOIN payments.payments p ON p.id = c.payment_id WHERE p.order_id = $1",
        )
        .bind(order_id)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// The payment service's events, oldest first: (type, data).
    pub async fn events(&self) -> Vec<(String, Value)> {
        sqlx::query_as("SELECT event_type, envelope->'data' FROM payments.outbox ORDER BY seq")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    /// An `order.*` event, written into the order service's outbox as the order service
    /// would, and so delivered to the other services by its relay.
    pub async fn order_event(&self, kind: &str, order_id: Uuid) {
        let id = Uuid::now_v7();
        let envelope = json!({
            "id": id, "type": kind, "occurred_at": chrono::Utc::now(), "aggregate_id": order_id,
            "data": {"order_id": order_id, "status": "cancelled"},
        });
        sqlx::query(
            "INSERT INTO ordering.outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
             VALUES ($1, 'order.events', $2, $3, $4, '00-00000000000000000000000000000001-0000000000000001-01')",
        )
        .bind(id)
        .bind(order_id)
        .bind(kind)
        .bind(envelope)
        .execute(&self.db)
        .await
        .unwrap();
    }
}
