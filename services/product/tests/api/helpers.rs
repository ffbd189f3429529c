//! Spawns the real product service on a free port against its own database, with access
//! tokens signed by the same key (the user service is not needed to be an admin here).

use common::auth::Role;
use common::http::Shared;
use common::testing::{Served, TestDb, TestServer, TestServices};
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub use common::testing::{expected, problem, validation};

pub struct TestApp {
    pub server: TestServer,
    pub shared: Shared,
    /// The `catalog` schema, for checks a client cannot make.
    pub db: PgPool,
    pub admin: String,
    pub customer: String,
    _database: TestDb,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let (database, vars) = TestDb::with_vars(extra).await;
        let services = TestServices::connect(vars).await;
        let Served { server, db, .. } = services.serve::<product::Config>(&[]).await;
        let shared = services.shared;
        let token = |role| shared.auth.issue(Uuid::now_v7(), role, Uuid::now_v7()).expect("a token").token;
        let (admin, customer) = (token(Role::Admin), token(Role::Customer));
        Self { server, shared, db, admin, customer, _database: database }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.server.get(path, None).await
    }

    pub async fn json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.expect("JSON")
    }

    pub async fn post_as_admin(&self, path: &str, body: &Value) -> Response {
        self.server.post(path, body, Some(&self.admin)).await
    }

    pub async fn category(&self, name: &str) -> Uuid {
        let res = self.post_as_admin("/api/categories", &json!({"name": name})).await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Creates a product; `fields` override the defaults.
    pub async fn product(&self, category: Uuid, fields: Value) -> Value {
        let mut body = json!({"name": "Oak desk", "price": "100.00", "stock": 10, "category_id": category});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let res = self.post_as_admin("/api/products", &body).await;
        assert_eq!(res.status(), 201, "{body}");
        res.json().await.unwrap()
    }

    pub async fn stock_of(&self, id: &str) -> i64 {
        sqlx::query_scalar::<_, i32>("SELECT stock FROM catalog.products WHERE id = $1")
            .bind(id.parse::<Uuid>().unwrap())
            .fetch_one(&self.db)
            .await
            .unwrap()
            .into()
    }

    /// Reserves as the order service does, with a service token.
    pub async fn reserve(&self, order_id: Uuid, items: Value) -> Response {
        let token = self.shared.auth.service_token("order").expect("a service token");
        self.server.post("/internal/reservations", &json!({"order_id": order_id, "items": items}), Some(&token)).await
    }
}
