//! Spawns the real user service on a free port against its own fresh database and its own
//! Redis key prefix, and speaks to it over HTTP as a client would.

use common::config::Env;
use common::http::Shared;
use common::testing::{TestDb, TestServer, redis_prefix, redis_url};
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
        let db = TestDb::create().await;
        let prefix = redis_prefix();
        let mut vars: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url().to_owned()),
            ("REDIS_URL".into(), redis_url()),
            ("REDIS_PREFIX".into(), prefix.clone()),
            ("BCRYPT_COST".into(), "4".into()),
            ("JWT_SECRET".into(), format!("test-secret-{}", uuid::Uuid::new_v4())),
            ("DB_MAX_CONNECTIONS".into(), "5".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).into(), (*v).into()));
        }
        let server = start(&vars).await;
        Self { server, _db: db, vars }
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
        let mut req = self.client().get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        self.send(reqwest::Method::POST, path, body, token).await
    }

    pub async fn patch(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        self.send(reqwest::Method::PATCH, path, body, token).await
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut req = self.client().request(method, self.url(path)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Response {
        let mut req = self.client().post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request sent")
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

async fn start(vars: &[(String, String)]) -> TestServer {
    let env = Env::from_pairs(vars.iter().cloned());
    let config = user::Config::from_env(&env).expect("test configuration is valid");
    let shared = Shared::connect(&config.common).await.expect("shared dependencies");
    let service = user::start(&config, &shared).await.expect("the user service starts");
    TestServer::spawn(common::http::app(vec![service], shared)).await
}

/// The problem body of an error response, checked to be problem+json, with the
/// per-request `request_id` checked and removed so the rest can be pinned.
pub async fn problem(res: Response) -> Value {
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "status {}", res.status());
    let header_id = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let mut body: Value = res.json().await.expect("a JSON problem");
    let id = body.as_object_mut().unwrap().remove("request_id");
    assert_eq!(id.and_then(|v| v.as_str().map(str::to_owned)), header_id, "request_id matches X-Request-Id");
    body
}

/// The pinned shape of a problem with no `errors`.
pub fn expected(status: u16, code: &str, title: &str, detail: Option<&str>) -> Value {
    let mut body = json!({
        "type": format!("https://errors.shop.example/{code}"),
        "title": title,
        "status": status,
        "code": code,
    });
    if let Some(detail) = detail {
        body["detail"] = json!(detail);
    }
    body
}

/// The pinned shape of a 422 with the given field errors.
pub fn validation(errors: Value) -> Value {
    let mut body =
        expected(422, "validation_failed", "Validation failed", Some("the request has invalid fields; see `errors`"));
    body["errors"] = errors;
    body
}
