//! Spawns the real user service on a free port against its own fresh database and its own
//! Redis key prefix, and speaks to it over HTTP as a client would.

use common::testing::{TestDb, TestServer, TestServices};
use reqwest::Response;
use serde_json::{Value, json};
use user::config::{DEV_ADMIN_EMAIL, DEV_ADMIN_PASSWORD};

pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub server: TestServer,
    /// Kept so the database lives as long as the app.
    _db: TestDb,
    vars: Vec<(String, String)>,
}

/// A logged-in customer.
#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    pub refresh: String,
    pub user: Value,
}

impl TestApp {
    /// With Redis, as every deployment but the bare `shop` runs.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Extra variables override the defaults; `("REDIS_URL", "")` runs without Redis.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let (db, vars) = TestDb::with_vars(extra).await;
        let server = start(&vars).await;
        Self { server, _db: db, vars }
    }

    pub fn database(&self) -> &TestDb {
        &self._db
    }

    /// A second replica: same database, same Redis prefix, same secret, its own port.
    pub async fn replica(&self) -> TestServer {
        start(&self.vars).await
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.server.client
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.server.get(path, token).await
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        self.server.post(path, body, token).await
    }

    pub async fn patch(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        self.server.patch(path, body, token).await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Response {
        self.server.post_raw(path, content_type, body).await
    }

    pub async fn register(&self, username: &str, email: &str) -> Response {
        self.post("/api/auth/register", &json!({"username": username, "email": email, "password": PASSWORD}), None)
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post("/api/auth/login", &json!({"email": email, "password": password}), None).await
    }

    /// Registers `name` (email `name@example.com`) and logs in.
    pub async fn customer(&self, name: &str) -> Session {
        let email = format!("{name}@example.com");
        let res = self.register(name, &email).await;
        assert_eq!(res.status(), 201, "register {name}");
        self.session(&email, PASSWORD).await
    }

    pub async fn session(&self, email: &str, password: &str) -> Session {
        let res = self.login(email, password).await;
        assert_eq!(res.status(), 200, "login {email}");
        session_from(res.json().await.expect("tokens"))
    }

    pub async fn admin(&self) -> Session {
        self.session(DEV_ADMIN_EMAIL, DEV_ADMIN_PASSWORD).await
    }
}

pub fn session_from(tokens: Value) -> Session {
    Session {
        access: tokens["access_token"].as_str().expect("access_token").to_owned(),
        refresh: tokens["refresh_token"].as_str().expect("refresh_token").to_owned(),
        user: tokens["user"].clone(),
    }
}

/// A replica of the user service over `vars`: its own process (first-level cache, connections);
/// the database and Redis, with the rate limits kept there, shared.
async fn start(vars: &[(String, String)]) -> TestServer {
    TestServices::connect(vars.to_vec()).await.serve::<user::Config>(&[]).await.server
}

pub use common::testing::{expected, problem, validation};
