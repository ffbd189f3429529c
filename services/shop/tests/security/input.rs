//! Hostile input: bodies, every string parameter, and headers.

use super::*;

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
