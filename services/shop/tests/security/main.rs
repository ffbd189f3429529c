//! The platform as an attacker would try it: the four service binaries as processes (with
//! the broker, Redis and PostgreSQL), poked through their public routes. One customer
//! reaching for another's orders, payments, cart or profile; customers calling admin and
//! internal routes; fields a client must not set; forged and stale tokens; hostile bodies;
//! injection in every string parameter; the login limit across two replicas. Every test
//! ends by reading every log line and error body it caused for secrets.

#[allow(dead_code)] // each test uses its own part of the harness
#[path = "../support/mod.rs"]
mod support;

mod access;
mod input;
mod replicas;
mod tokens;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Platform;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
const ADMIN_PASSWORD: &str = "admin-password-dev-only";

/// A platform with verbose logs, a JWT secret the test knows, and a record of every
/// error body and every secret handed out, for the leak check at the end.
struct Lab {
    platform: Platform,
    secret: String,
    secrets: Mutex<Vec<String>>,
    bodies: Mutex<Vec<String>>,
}

struct Customer {
    id: String,
    access: String,
    refresh: String,
}

impl Lab {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let secret = format!("jwt-secret-{}", Uuid::new_v4().simple());
        let mut env = vec![("JWT_SECRET", secret.as_str()), ("RUST_LOG", "debug,hyper=info,h2=info,librdkafka=info")];
        env.extend_from_slice(extra);
        let platform = Platform::start(&env).await;
        let secrets = Mutex::new(vec![secret.clone(), PASSWORD.to_owned(), ADMIN_PASSWORD.to_owned()]);
        Self { platform, secret, secrets, bodies: Mutex::default() }
    }

    /// A lab with its admin signed in and one product of 10 units: where most tests start.
    async fn with_product() -> (Self, Customer, String) {
        let lab = Self::start(&[]).await;
        let admin = lab.admin().await;
        let product = lab.product(&admin.access, 10).await;
        (lab, admin, product)
    }

    /// One request, never retried; an error's body is kept for the leak check.
    async fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let key = (method == Method::POST && path.starts_with("/api/payments")).then(|| Uuid::new_v4().to_string());
        let res = self.platform.request(service, method, path, token, key.as_deref(), body).send().await.unwrap();
        self.answer(res).await
    }

    async fn answer(&self, res: reqwest::Response) -> (StatusCode, Value) {
        let status = res.status();
        let problem = res.headers().get("content-type").is_some_and(|v| v == "application/problem+json");
        let text = res.text().await.unwrap();
        assert!(status.as_u16() < 500, "a 5xx: {status} {text}");
        assert!(status.is_success() || problem, "an error that is not problem+json: {status} {text}");
        if !status.is_success() {
            self.bodies.lock().unwrap().push(text.clone());
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn raw(
        &self,
        service: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        token: &str,
    ) -> (StatusCode, Value) {
        let mut request = self.platform.client.post(self.platform.url(service, path)).bearer_auth(token).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if path.starts_with("/api/payments") || path == "/api/orders" {
            request = request.header("idempotency-key", Uuid::new_v4().to_string());
        }
        self.answer(request.send().await.unwrap()).await
    }

    fn keep_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_owned());
    }

    async fn customer(&self, name: &str) -> Customer {
        let body = json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
        let (status, user) = self.call("user", Method::POST, "/api/auth/register", None, Some(&body)).await;
        assert_eq!(status, 201, "register: {user}");
        self.login(&format!("{name}@example.com"), PASSWORD).await
    }

    async fn login(&self, email: &str, password: &str) -> Customer {
        let body = json!({"email": email, "password": password});
        let (status, tokens) = self.call("user", Method::POST, "/api/auth/login", None, Some(&body)).await;
        assert_eq!(status, 200, "login: {tokens}");
        let customer = Customer {
            id: tokens["user"]["id"].as_str().unwrap().to_owned(),
            access: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        };
        self.keep_secret(&customer.access);
        self.keep_secret(&customer.refresh);
        customer
    }

    async fn admin(&self) -> Customer {
        self.login("admin@shop.local", ADMIN_PASSWORD).await
    }

    /// A product with `stock` units in a new category.
    async fn product(&self, admin: &str, stock: i64) -> String {
        let (_, products) = self.platform.catalogue(admin, 1, stock).await;
        products[0].clone()
    }

    /// An order of one unit of `product` by `customer`, pending payment.
    async fn order(&self, customer: &Customer, product: &str) -> Value {
        let body = json!({"items": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
        let (status, order) =
            self.call("order", Method::POST, "/api/orders", Some(&customer.access), Some(&body)).await;
        assert_eq!(status, 201, "order: {order}");
        order
    }

    /// `customer`'s order `id`, once it has reached `status` (events are applied
    /// asynchronously); fails after 15 s.
    async fn order_once(&self, customer: &Customer, id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (code, order) =
                self.call("order", Method::GET, &format!("/api/orders/{id}"), Some(&customer.access), None).await;
            assert_eq!(code, 200, "{order}");
            if order["status"] == status {
                return order;
            }
            assert!(std::time::Instant::now() < deadline, "order {id} never became {status}: {order}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn pay(&self, customer: &Customer, order: &Value) -> (StatusCode, Value) {
        let body = payment(order, "tok_visa");
        self.call("payment", Method::POST, "/api/payments", Some(&customer.access), Some(&body)).await
    }

    /// No log line of any process and no error body holds a password, a token, a
    /// password hash, the JWT secret or a connection string.
    fn assert_nothing_leaked(&self) {
        let mut texts: Vec<(String, String)> = std::fs::read_dir(&self.platform.logs)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.display().to_string(), std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        let logged: usize = texts.iter().map(|(_, text)| text.lines().count()).sum();
        assert!(logged > 20, "the services logged almost nothing ({logged} lines): the check would prove nothing");
        texts.extend(self.bodies.lock().unwrap().iter().map(|body| ("an error body".to_owned(), body.clone())));
        let secrets = self.secrets.lock().unwrap();
        let database = self.platform.database.url().to_owned();
        for (place, text) in &texts {
            for secret in secrets.iter() {
                assert!(!text.contains(secret.as_str()), "{place} holds the secret {secret:.12}…");
            }
            for pattern in ["$2b$", "$2a$", "$2y$", "$argon2", "postgres://", "postgresql://", &database] {
                assert!(!text.contains(pattern), "{place} holds {pattern:?}");
            }
        }
    }
}

fn address() -> Value {
    json!({"name": "Jane Doe", "line1": "1 Main St", "city": "Oslo", "postal_code": "0150", "country": "NO"})
}

fn payment(order: &Value, card: &str) -> Value {
    json!({"order_id": order["id"], "amount": order["total"], "currency": "USD", "method": {"type": "card", "token": card}})
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}
