//! The platform as an attacker would try it: the four service binaries as processes (with
//! the broker, Redis and PostgreSQL), poked through their public routes. One customer
//! reaching for another's orders, payments, cart or profile; customers calling admin and
//! internal routes; fields a client must not set; forged and stale tokens; hostile bodies;
//! injection in every string parameter; the login limit across two replicas. Every test
//! ends by reading every log line and error body it caused for secrets.

#[allow(dead_code)] // each test uses its own part of the harness
mod support;

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

#[tokio::test]
async fn one_customer_cannot_read_or_change_what_is_anothers() {
    let (lab, _, product) = Lab::with_product().await;
    let (alice, mallory) = (lab.customer("alice").await, lab.customer("mallory").await);

    let order = lab.order(&alice, &product).await;
    let order_id = order["id"].as_str().unwrap();
    let not_found = |what: &str, (status, body): (StatusCode, Value)| {
        assert_eq!(status, 404, "{what}: {body}");
        assert_eq!(body["code"], "not_found", "{what}: {body}");
    };
    let m = Some(mallory.access.as_str());
    // Orders: reading, paying and cancelling another's are "not found" (existence hidden).
    not_found("read order", lab.call("order", Method::GET, &format!("/api/orders/{order_id}"), m, None).await);
    not_found("pay order", lab.pay(&mallory, &order).await);
    let cancel = format!("/api/orders/{order_id}/cancel");
    not_found("cancel order", lab.call("order", Method::POST, &cancel, m, Some(&json!({}))).await);
    let (status, list) = lab.call("order", Method::GET, &format!("/api/orders?user_id={}", alice.id), m, None).await;
    assert!(
        status == 403 || (status == 200 && list["items"].as_array().unwrap().is_empty()),
        "another's orders by user_id: {status} {list}"
    );

    // Payments: another's payment is not found, and listing by their order shows nothing.
    let (status, paid) = lab.pay(&alice, &order).await;
    assert_eq!(status, 201, "alice pays: {paid}");
    let payment_id = paid["id"].as_str().unwrap();
    not_found("read payment", lab.call("payment", Method::GET, &format!("/api/payments/{payment_id}"), m, None).await);
    let (status, list) = lab.call("payment", Method::GET, &format!("/api/payments?order_id={order_id}"), m, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"], json!([]), "another's payments by order id");
    let refund = format!("/api/payments/{payment_id}/refunds");
    let (status, body) = lab.call("payment", Method::POST, &refund, m, Some(&json!({}))).await;
    assert_eq!(status, 403, "refund another's payment: {body}");

    // Cart: there is no cart id; whatever mallory does changes mallory's cart only.
    let a = Some(alice.access.as_str());
    let item = format!("/api/cart/items/{product}");
    let (status, _) = lab.call("order", Method::PUT, &item, a, Some(&json!({"quantity": 2}))).await;
    assert_eq!(status, 200);
    lab.call("order", Method::DELETE, &item, m, None).await;
    lab.call("order", Method::DELETE, "/api/cart", m, None).await;
    let (_, cart) = lab.call("order", Method::GET, "/api/cart", a, None).await;
    assert_eq!(cart["items"][0]["quantity"], 2, "alice's cart after mallory cleared his: {cart}");
    let (_, cart) = lab.call("order", Method::GET, "/api/cart", m, None).await;
    assert_eq!(cart["items"], json!([]), "mallory sees his own empty cart: {cart}");

    // Profile: another's by id is admin-only; "me" is always the caller; another's
    // session cannot be ended with a token that is not yours.
    let (status, body) = lab.call("user", Method::GET, &format!("/api/users/{}", alice.id), m, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    let change = json!({"username": "alice_owned", "current_password": PASSWORD});
    let (status, me) = lab.call("user", Method::PATCH, "/api/users/me", m, Some(&change)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], mallory.id, "PATCH /me changed someone else");
    let logout = json!({"refresh_token": alice.refresh});
    let (status, _) = lab.call("user", Method::POST, "/api/auth/logout", m, Some(&logout)).await;
    assert!(status.is_client_error() || status == 204, "logout with another's refresh token: {status}");
    let (status, me) = lab.call("user", Method::GET, "/api/users/me", a, None).await;
    assert_eq!((status, me["username"].as_str()), (StatusCode::OK, Some("alice")), "alice is untouched: {me}");
    let (status, tokens) =
        lab.call("user", Method::POST, "/api/auth/refresh", None, Some(&json!({"refresh_token": alice.refresh}))).await;
    assert_eq!(status, 200, "alice's session survives mallory's logout: {tokens}");
    lab.keep_secret(tokens["access_token"].as_str().unwrap());
    lab.keep_secret(tokens["refresh_token"].as_str().unwrap());

    // And alice's order is still hers, paid (once the payment's event is applied), untouched.
    let order = lab.order_once(&alice, order_id, "paid").await;
    assert_eq!(order["user_id"], alice.id.as_str());
    lab.assert_nothing_leaked();
}

#[tokio::test]
async fn customers_and_strangers_cannot_call_admin_or_internal_routes() {
    let (lab, admin, product) = Lab::with_product().await;
    let customer = lab.customer("eve").await;
    let order = lab.order(&customer, &product).await;
    let (status, paid) = lab.pay(&customer, &order).await;
    assert_eq!(status, 201, "{paid}");
    let (order_id, payment_id) = (order["id"].as_str().unwrap(), paid["id"].as_str().unwrap());
    let category = json!({"name": "Hacked"});
    let new_product = json!({"name": "Free", "price": "0.01", "stock": 1, "category_id": Uuid::now_v7()});
    let admin_routes: Vec<(&str, Method, String, Option<Value>)> = vec![
        ("user", Method::GET, format!("/api/users/{}", admin.id), None),
        ("product", Method::POST, "/api/categories".into(), Some(category)),
        ("product", Method::POST, "/api/products".into(), Some(new_product)),
        ("product", Method::PATCH, format!("/api/products/{product}"), Some(json!({"price": "0.01"}))),
        ("product", Method::DELETE, format!("/api/products/{product}"), None),
        ("product", Method::POST, format!("/api/products/{product}/stock"), Some(json!({"delta": 1000}))),
        ("order", Method::POST, format!("/api/orders/{order_id}/ship"), Some(json!({}))),
        ("order", Method::POST, format!("/api/orders/{order_id}/deliver"), Some(json!({}))),
        ("payment", Method::POST, format!("/api/payments/{payment_id}/refunds"), Some(json!({}))),
    ];
    for (service, method, path, body) in &admin_routes {
        let (status, problem) = lab.call(service, method.clone(), path, Some(&customer.access), body.as_ref()).await;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{method} {path}");
        let (status, problem) = lab.call(service, method.clone(), path, None, body.as_ref()).await;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{path}");
    }
    // Internal routes open to service tokens only: not to a customer's, nor an admin's.
    let reserve = json!({"order_id": Uuid::now_v7(), "items": [{"product_id": product, "quantity": 1}]});
    for token in [&customer.access, &admin.access] {
        let (status, body) =
            lab.call("product", Method::POST, "/internal/reservations", Some(token), Some(&reserve)).await;
        assert!(matches!(status.as_u16(), 401 | 403), "reserve with a user token: {status} {body}");
        let (status, body) =
            lab.call("order", Method::GET, &format!("/internal/orders/{order_id}"), Some(token), None).await;
        assert!(matches!(status.as_u16(), 401 | 403), "internal order with a user token: {status} {body}");
    }
    // Nothing changed: the product, the order and the payment are as they were.
    let (_, now) = lab.call("product", Method::GET, &format!("/api/products/{product}"), None, None).await;
    assert_eq!((now["price"].as_str(), now["stock"].as_i64()), (Some("5.99"), Some(9)), "{now}");
    lab.order_once(&customer, order_id, "paid").await;
    let path = format!("/api/payments/{payment_id}");
    let (_, now) = lab.call("payment", Method::GET, &path, Some(&customer.access), None).await;
    assert_eq!(now["status"], "succeeded", "{now}");
    lab.assert_nothing_leaked();
}

#[tokio::test]
async fn fields_a_client_must_not_set_are_refused() {
    let (lab, _, product) = Lab::with_product().await;
    let victim = lab.customer("victim").await;
    let customer = lab.customer("sneaky").await;
    let c = Some(customer.access.as_str());
    let refused = |what: &str, (status, body): (StatusCode, Value)| {
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{what}: {body}"
        );
    };

    let register = json!({"username": "boss", "email": "boss@example.com", "password": PASSWORD, "role": "admin"});
    refused("register as admin", lab.call("user", Method::POST, "/api/auth/register", None, Some(&register)).await);
    for field in [json!({"role": "admin"}), json!({"id": victim.id}), json!({"created_at": "2020-01-01T00:00:00Z"})] {
        let mut body = json!({"current_password": PASSWORD});
        body.as_object_mut().unwrap().extend(field.as_object().unwrap().clone());
        refused("profile field", lab.call("user", Method::PATCH, "/api/users/me", c, Some(&body)).await);
    }
    let item = format!("/api/cart/items/{product}");
    refused(
        "cart price",
        lab.call("order", Method::PUT, &item, c, Some(&json!({"quantity": 1, "unit_price": "0.01"}))).await,
    );
    let line = json!({"product_id": product, "quantity": 1});
    let cheap_line = json!({"product_id": product, "quantity": 1, "unit_price": "0.01"});
    for extra in [
        json!({"user_id": victim.id}),
        json!({"status": "paid"}),
        json!({"total": "0.01"}),
        json!({"price": "0.01"}),
        json!({"items": [cheap_line]}),
    ] {
        let mut body = json!({"items": [line], "shipping_address": address()});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let path = "/api/orders";
        refused(
            "order field",
            lab.raw("order", path, Some("application/json"), body.to_string().into(), &customer.access).await,
        );
    }
    let order = lab.order(&customer, &product).await;
    for extra in [json!({"status": "succeeded"}), json!({"user_id": victim.id}), json!({"id": Uuid::now_v7()})] {
        let mut body = payment(&order, "tok_visa");
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        refused("payment field", lab.call("payment", Method::POST, "/api/payments", c, Some(&body)).await);
    }
    let mut cheap = payment(&order, "tok_visa");
    cheap["amount"] = json!("0.01");
    let (status, body) = lab.call("payment", Method::POST, "/api/payments", c, Some(&cheap)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("amount_mismatch")), "{body}");

    // Nothing took: still a customer, one order at the catalogue price, unpaid; the
    // victim has no orders.
    let (_, me) = lab.call("user", Method::GET, "/api/users/me", c, None).await;
    assert_eq!(me["role"], "customer");
    let (_, orders) = lab.call("order", Method::GET, "/api/orders", c, None).await;
    let orders = orders["items"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!((orders[0]["total"].as_str(), orders[0]["status"].as_str()), (Some("5.99"), Some("pending_payment")));
    let (_, theirs) = lab.call("order", Method::GET, "/api/orders", Some(&victim.access), None).await;
    assert_eq!(theirs["items"], json!([]));
    let (_, payments) = lab.call("payment", Method::GET, "/api/payments", c, None).await;
    assert_eq!(payments["items"], json!([]));
    lab.assert_nothing_leaked();
}

/// An access token with `claims`, signed with `key` under `alg`.
fn token(alg: Algorithm, key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

#[tokio::test]
async fn forged_and_stale_tokens_open_nothing() {
    let (lab, admin, product) = Lab::with_product().await;
    let customer = lab.customer("holder").await;
    let order = lab.order(&customer, &product).await;
    let t = now();
    // A real admin's identity, so only the token's flaw can be what refuses it.
    let claims = |changes: Value| {
        let mut claims = json!({"sub": admin.id, "role": "admin", "jti": Uuid::now_v7(), "sid": Uuid::now_v7(),
                                "iat": t - 5, "exp": t + 600, "iss": "shop", "aud": "shop-api"});
        claims.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
        claims
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let secret = lab.secret.as_str();
    let forged = [
        ("alg none", none),
        ("a wrong key", token(Algorithm::HS256, "not-the-secret", &claims(json!({})))),
        ("HS512 with the right key", token(Algorithm::HS512, secret, &claims(json!({})))),
        ("expired", token(Algorithm::HS256, secret, &claims(json!({"iat": t - 1000, "exp": t - 10})))),
        ("not yet valid", token(Algorithm::HS256, secret, &claims(json!({"nbf": t + 600})))),
        ("a wrong issuer", token(Algorithm::HS256, secret, &claims(json!({"iss": "evil"})))),
        ("a wrong audience", token(Algorithm::HS256, secret, &claims(json!({"aud": "someone-else"})))),
        ("the internal audience", token(Algorithm::HS256, secret, &claims(json!({"aud": "shop-internal"})))),
        ("no expiry", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            token(Algorithm::HS256, secret, &c)
        }),
        ("garbage", "not.a.token".to_owned()),
    ];
    // The well-signed control opens the same routes, so each refusal is the flaw's doing.
    let good = token(Algorithm::HS256, secret, &claims(json!({})));
    let order_id = order["id"].as_str().unwrap();
    let routes = [
        ("user", Method::GET, format!("/api/users/{}", customer.id)),
        ("product", Method::POST, format!("/api/products/{product}/stock")),
        ("order", Method::GET, format!("/api/orders/{order_id}")),
        ("payment", Method::GET, format!("/api/payments?order_id={order_id}")),
    ];
    for (service, method, path) in &routes {
        let body = (*method == Method::POST).then(|| json!({"delta": 1}));
        let (status, body_) = lab.call(service, method.clone(), path, Some(&good), body.as_ref()).await;
        assert_eq!(status, 200, "control on {service} {path}: {body_}");
        for (flaw, forged) in &forged {
            let (status, problem) = lab.call(service, method.clone(), path, Some(forged), body.as_ref()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "a token with {flaw} on {service} {path}: {problem}"
            );
        }
    }
    lab.assert_nothing_leaked();
}

/// What is sent (a name, the content type, the body) and the statuses that may answer it.
type HostileBody = (&'static str, Option<&'static str>, Vec<u8>, &'static [u16]);

#[tokio::test]
async fn hostile_bodies_are_clean_client_errors() {
    let lab = Lab::start(&[]).await;
    let admin = lab.admin().await;
    let customer = lab.customer("fuzzer").await;
    let routes = [
        ("user", "/api/auth/register"),
        ("product", "/api/categories"),
        ("order", "/api/orders"),
        ("payment", "/api/payments"),
    ];
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    for (service, path) in routes {
        let token = if service == "product" { &admin.access } else { &customer.access };
        let cases: Vec<HostileBody> = vec![
            (
                "oversized",
                Some("application/json"),
                format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024)).into(),
                &[413],
            ),
            ("deeply nested array", Some("application/json"), deep(20_000).into(), &[400, 422]),
            ("deeply nested object", Some("application/json"), deep_object(5_000).into(), &[400, 422]),
            ("malformed", Some("application/json"), br#"{"name": "#.to_vec(), &[400]),
            ("not UTF-8", Some("application/json"), b"{\"name\": \"\xff\xfe\"}".to_vec(), &[400]),
            ("empty", Some("application/json"), Vec::new(), &[400]),
            ("a JSON string", Some("application/json"), br#""hello""#.to_vec(), &[400, 422]),
            (
                "huge number",
                Some("application/json"),
                format!(r#"{{"name": 1{}}}"#, "0".repeat(5000)).into(),
                &[400, 422],
            ),
            ("no content type", None, br#"{"name": "x"}"#.to_vec(), &[415]),
            ("form data", Some("application/x-www-form-urlencoded"), b"name=x".to_vec(), &[415]),
            ("XML", Some("application/xml"), b"<name>x</name>".to_vec(), &[415]),
        ];
        for (what, content_type, body, expected) in cases {
            let (status, problem) = lab.raw(service, path, content_type, body, token).await;
            assert!(expected.contains(&status.as_u16()), "{what} to {service} {path}: {status} {problem}");
            assert_eq!(problem["status"], status.as_u16(), "{what} to {service} {path}: {problem}");
        }
    }
    // The services still work afterwards.
    let (status, _) = lab.call("user", Method::GET, "/api/users/me", Some(&customer.access), None).await;
    assert_eq!(status, 200);
    lab.assert_nothing_leaked();
}

const INJECTIONS: [&str; 6] = [
    "' OR '1'='1",
    "'; DROP TABLE catalog.products; --",
    "\" OR \"\"=\"",
    "1; SELECT pg_sleep(10)--",
    "%27%20OR%201%3D1--",
    "${jndi:ldap://x}<script>alert(1)</script>",
];

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn injection_in_every_string_parameter_is_inert() {
    let lab = Lab::start(&[]).await;
    let admin = lab.admin().await;
    let (category, products) = lab.platform.catalogue(&admin.access, 3, 10).await;
    let customer = lab.customer("bobby").await;
    let c = Some(customer.access.as_str());
    let (_, all) = lab.call("product", Method::GET, "/api/products?limit=100", None, None).await;
    let total = all["items"].as_array().unwrap().len();

    for (n, attack) in INJECTIONS.iter().enumerate() {
        let q = encode(attack);
        // Search never errors and never matches what it does not contain.
        let (status, page) = lab.call("product", Method::GET, &format!("/api/products?q={q}"), None, None).await;
        assert_eq!(status, 200, "q={attack}: {page}");
        assert!(page["items"].as_array().unwrap().len() < total, "q={attack} matched everything");
        // Typed parameters refuse it as a bad request.
        for param in ["category_id", "min_price", "max_price", "in_stock", "sort", "limit", "cursor"] {
            let (status, body) =
                lab.call("product", Method::GET, &format!("/api/products?{param}={q}"), None, None).await;
            assert!(matches!(status.as_u16(), 400 | 422), "{param}={attack}: {status} {body}");
        }
        for (service, path) in [
            ("product", format!("/api/products/{q}")),
            ("order", format!("/api/orders/{q}")),
            ("payment", format!("/api/payments/{q}")),
            ("order", format!("/api/orders?cursor={q}")),
            ("order", format!("/api/orders?user_id={q}")),
            ("payment", format!("/api/payments?order_id={q}")),
            ("user", format!("/api/users/{q}")),
        ] {
            let token = if service == "user" { Some(admin.access.as_str()) } else { c };
            let (status, body) = lab.call(service, Method::GET, &path, token, None).await;
            assert!(matches!(status.as_u16(), 400 | 404 | 422), "{service} {path}: {status} {body}");
        }
        let (status, body) =
            lab.call("order", Method::PUT, &format!("/api/cart/items/{q}"), c, Some(&json!({"quantity": 1}))).await;
        assert!(matches!(status.as_u16(), 400 | 404 | 422), "cart item {attack}: {status} {body}");

        // Strings stored as given come back exactly as given.
        let email = format!("bobby{n}@example.com");
        let body = json!({"username": attack, "email": email, "password": PASSWORD});
        let (status, _) = lab.call("user", Method::POST, "/api/auth/register", None, Some(&body)).await;
        assert_eq!(status, 422, "username {attack}");
        let body = json!({"username": format!("bobby{n}"), "email": attack, "password": PASSWORD});
        let (status, _) = lab.call("user", Method::POST, "/api/auth/register", None, Some(&body)).await;
        assert_eq!(status, 422, "email {attack}");
        let password = format!("{attack}{attack}");
        let body = json!({"username": format!("bobby{n}"), "email": email, "password": password});
        let (status, _) = lab.call("user", Method::POST, "/api/auth/register", None, Some(&body)).await;
        assert_eq!(status, 201, "password {attack}");
        lab.keep_secret(&password);
        lab.login(&email, &password).await;
        let body = json!({"email": attack, "password": attack});
        let (status, _) = lab.call("user", Method::POST, "/api/auth/login", None, Some(&body)).await;
        assert!(matches!(status.as_u16(), 401 | 422), "login as {attack}: {status}");
        let body = json!({"email": email, "password": "' OR '1'='1' --"});
        let (status, _) = lab.call("user", Method::POST, "/api/auth/login", None, Some(&body)).await;
        assert_eq!(status, 401, "password {attack} opened an account");

        let body = json!({"name": attack, "description": attack, "price": "1.00", "stock": 1, "category_id": category});
        let (status, made) = lab.call("product", Method::POST, "/api/products", Some(&admin.access), Some(&body)).await;
        assert_eq!(status, 201, "product named {attack}: {made}");
        let (_, read) = lab
            .call("product", Method::GET, &format!("/api/products/{}", made["id"].as_str().unwrap()), None, None)
            .await;
        assert_eq!((read["name"].as_str(), read["description"].as_str()), (Some(*attack), Some(*attack)));
        let body = json!({"name": "x", "price": "1.00", "stock": 1, "category_id": category, "sku": attack});
        let (status, made) = lab.call("product", Method::POST, "/api/products", Some(&admin.access), Some(&body)).await;
        assert!(status == 201 || status == 422, "sku {attack}: {status} {made}");
        let (status, made) = lab
            .call("product", Method::POST, "/api/categories", Some(&admin.access), Some(&json!({"name": attack})))
            .await;
        assert!(status == 201 || status == 409, "category {attack}: {status} {made}");

        let shipping = json!({"name": attack, "line1": attack, "line2": attack, "city": attack, "postal_code": "0150", "country": "NO"});
        let body = json!({"items": [{"product_id": products[0], "quantity": 1}], "shipping_address": shipping});
        let res = lab
            .platform
            .request("order", Method::POST, "/api/orders", c, Some(attack), Some(&body))
            .send()
            .await
            .unwrap();
        let (status, order) = lab.answer(res).await;
        assert_eq!(status, 201, "address {attack}: {order}");
        assert_eq!(order["shipping_address"], shipping);
        let mut pay = payment(&order, attack);
        let (status, body) = lab.call("payment", Method::POST, "/api/payments", c, Some(&pay)).await;
        assert!(matches!(status.as_u16(), 201 | 422), "card token {attack}: {status} {body}");
        if status == 201 {
            assert_eq!(body["status"], "failed", "an unknown card token paid: {body}");
        }
        pay["currency"] = json!(attack);
        let (status, _) = lab.call("payment", Method::POST, "/api/payments", c, Some(&pay)).await;
        assert_eq!(status, 422, "currency {attack}");
    }
    // Every table is there and whole: the first products are all still served, the
    // customer still logs in.
    for product in &products {
        let (status, body) = lab.call("product", Method::GET, &format!("/api/products/{product}"), None, None).await;
        assert_eq!(status, 200, "{body}");
    }
    lab.login("bobby@example.com", PASSWORD).await;
    lab.assert_nothing_leaked();
}

/// Sends `head` (a request line and headers) to `port` as raw bytes and reads the answer.
fn raw_http(port: u16, head: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn header_injection_is_not_echoed() {
    let lab = Lab::start(&[]).await;
    let port = lab.platform.ports["product"];
    let ids: [&[u8]; 5] = [
        b"ok\rSet-Cookie: session=stolen",
        b"ok\x00x",
        b"caf\xc3\xa9",
        b"has space",
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    for id in ids {
        let mut head =
            b"GET /api/products?limit=1 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nX-Request-Id: ".to_vec();
        head.extend_from_slice(id);
        head.extend_from_slice(b"\r\n\r\n");
        let answer = raw_http(port, &head);
        let (status_line, rest) = answer.split_once("\r\n").unwrap_or((&answer, ""));
        let headers = rest.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
        assert!(
            status_line.contains(" 200 ") || status_line.contains(" 400 "),
            "{:?}: {status_line}",
            String::from_utf8_lossy(id)
        );
        assert!(!headers.contains("set-cookie"), "an injected header came back: {headers}");
        let echoed = headers.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or("");
        assert_ne!(echoed.as_bytes(), id.to_ascii_lowercase(), "an invalid request id was echoed");
        if status_line.contains(" 200 ") {
            assert!(!echoed.is_empty(), "no request id at all: {headers}");
        }
    }
    // Idempotency-Key outside 1–255 characters is refused, whatever it holds.
    let admin = lab.admin().await;
    let product = lab.product(&admin.access, 5).await;
    let customer = lab.customer("headers").await;
    let body = json!({"items": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
    for key in ["k".repeat(256), "' OR 1=1 --".to_owned()] {
        let res =
            lab.platform.request("order", Method::POST, "/api/orders", Some(&customer.access), Some(&key), Some(&body));
        let (status, problem) = lab.answer(res.send().await.unwrap()).await;
        if key.len() > 255 {
            assert!(matches!(status.as_u16(), 400 | 422), "a 256-character key: {status} {problem}");
        } else {
            assert_eq!(status, 201, "an odd but valid key: {problem}");
        }
    }
    lab.assert_nothing_leaked();
}

#[tokio::test]
async fn two_replicas_share_one_login_budget() {
    let lab = Lab::start(&[("LOGIN_RATE_LIMIT", "10")]).await;
    let victim = lab.customer("target").await;
    let _ = victim;
    let second = lab.platform.replica("user").await;
    let first = lab.platform.ports["user"];
    let body = json!({"email": "target@example.com", "password": "wrong password!"});
    // The customer's own login above spent one attempt: nine more fail, the next is refused.
    for attempt in 0..9 {
        let port = if attempt % 2 == 0 { first } else { second.port };
        let res = lab
            .platform
            .client
            .post(format!("http://127.0.0.1:{port}/api/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = lab.answer(res).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_credentials")),
            "attempt {attempt}"
        );
    }
    for port in [first, second.port] {
        let res = lab
            .platform
            .client
            .post(format!("http://127.0.0.1:{port}/api/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let (status, problem) = lab.answer(res).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
            "{problem}"
        );
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))), "Retry-After");
    }
    // The right password is refused too until the minute is over: the budget is the email's.
    let res = lab
        .platform
        .client
        .post(format!("http://127.0.0.1:{}/api/auth/login", second.port))
        .json(&json!({"email": "target@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let (status, _) = lab.answer(res).await;
    assert_eq!(status, 429);
    lab.assert_nothing_leaked();
}
