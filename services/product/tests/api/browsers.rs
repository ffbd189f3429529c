//! What browsers and mobile clients get beside the API (API.md, "Conventions"): CORS for
//! the configured origins only, and compressed answers for clients that ask.

use std::io::Read as _;

use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, ORIGIN, VARY};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const SHOP: &str = "https://shop.example";

async fn app() -> TestApp {
    TestApp::spawn_with(&[("CORS_ALLOWED_ORIGINS", "https://shop.example, http://localhost:8000")]).await
}

fn preflight(app: &TestApp, origin: &str, method: &str, headers: &str) -> reqwest::RequestBuilder {
    app.server
        .client
        .request(Method::OPTIONS, app.server.url("/api/products"))
        .header(ORIGIN, origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_listed_origins_preflight_is_answered_with_the_contracts_headers() {
    let app = app().await;
    let res = preflight(&app, SHOP, "POST", "authorization, content-type, idempotency-key, x-request-id")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "a preflight is not a 405: {}", res.status());
    assert_eq!(header(&res, "access-control-allow-origin"), Some(SHOP));
    let methods = header(&res, "access-control-allow-methods").unwrap().to_ascii_uppercase();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        assert!(methods.contains(method), "{method} in {methods}");
    }
    let allowed = header(&res, "access-control-allow-headers").unwrap().to_ascii_lowercase();
    for name in ["authorization", "content-type", "idempotency-key", "x-request-id"] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    assert!(header(&res, "access-control-max-age").is_some());
    // The other listed origin too, and the grant names the origin that asked.
    let other = preflight(&app, "http://localhost:8000", "GET", "authorization").send().await.unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), Some("http://localhost:8000"));
}

#[tokio::test]
async fn a_listed_origin_may_read_the_headers_the_contract_exposes() {
    let app = app().await;
    let res = app.server.client.get(app.server.url("/api/products")).header(ORIGIN, SHOP).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), Some(SHOP));
    let exposed = header(&res, "access-control-expose-headers").unwrap().to_ascii_lowercase();
    for name in [
        "x-request-id",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "idempotent-replayed",
        "etag",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert!(header(&res, VARY.as_str()).unwrap().to_ascii_lowercase().contains("origin"), "caches keep origins apart");
    // Errors carry the grant as well, or a browser could not read the problem.
    let missing = app.server.client.get(app.server.url("/api/products/nope")).header(ORIGIN, SHOP).send().await;
    assert_eq!(header(&missing.unwrap(), "access-control-allow-origin"), Some(SHOP));
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_grant_and_no_origin_none_is_needed() {
    let app = app().await;
    for origin in ["https://evil.example", "https://shop.example.evil.example", "http://shop.example"] {
        let res = preflight(&app, origin, "POST", "authorization").send().await.unwrap();
        assert_eq!(header(&res, "access-control-allow-origin"), None, "{origin}");
        let res = app.server.client.get(app.server.url("/api/products")).header(ORIGIN, origin).send().await;
        let res = res.unwrap();
        assert_eq!(res.status(), 200, "the server answers; the browser withholds it from the page");
        assert_eq!(header(&res, "access-control-allow-origin"), None, "{origin}");
    }
    // Not configured: nobody is granted anything.
    let closed = TestApp::spawn().await;
    let res = preflight(&closed, SHOP, "GET", "authorization").send().await.unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), None);
}

/// A listing of 30 products: well over the 1 KiB from which answers are compressed.
async fn big_listing(app: &TestApp) -> (String, Vec<u8>) {
    let category = app.category("Lamps").await;
    for n in 0..30 {
        let description = format!("A reading lamp, model {n}, with a linen shade and a brass foot.");
        app.product(category, json!({"name": format!("Lamp {n}"), "description": description})).await;
    }
    let path = format!("/api/products?limit=30&category_id={category}");
    let plain = app.get(&path).await;
    assert_eq!(header(&plain, CONTENT_ENCODING.as_str()), None, "nothing asked, nothing encoded");
    let plain = plain.bytes().await.unwrap().to_vec();
    assert!(plain.len() > 4096, "{} bytes", plain.len());
    (path, plain)
}

async fn encoded(app: &TestApp, path: &str, accept: &str) -> reqwest::Response {
    let res = app.server.client.get(app.server.url(path)).header(ACCEPT_ENCODING, accept).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res
}

#[tokio::test]
async fn large_answers_are_gzip_or_brotli_as_the_client_asks_and_small_ones_are_not() {
    let app = TestApp::spawn().await;
    let (path, plain) = big_listing(&app).await;

    let gzip = encoded(&app, &path, "gzip").await;
    assert_eq!(header(&gzip, CONTENT_ENCODING.as_str()), Some("gzip"));
    assert!(header(&gzip, VARY.as_str()).unwrap().to_ascii_lowercase().contains("accept-encoding"));
    let body = gzip.bytes().await.unwrap();
    assert!(body.len() * 3 < plain.len(), "{} of {} bytes", body.len(), plain.len());
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, plain);

    let br = encoded(&app, &path, "gzip;q=0.5, br").await;
    assert_eq!(header(&br, CONTENT_ENCODING.as_str()), Some("br"));
    let body = br.bytes().await.unwrap();
    assert!(body.len() * 3 < plain.len(), "{} of {} bytes", body.len(), plain.len());
    let mut decoded = Vec::new();
    brotli::Decompressor::new(&body[..], 4096).read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, plain);

    // Under 1 KiB: sent as it is, whatever is accepted.
    let small = encoded(&app, "/api/categories", "gzip, br").await;
    assert_eq!(header(&small, CONTENT_ENCODING.as_str()), None);
    let small: Value = small.json().await.unwrap();
    assert_eq!(small["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_compressed_answer_keeps_its_etag_and_revalidates_to_304() {
    let app = TestApp::spawn().await;
    let (path, _) = big_listing(&app).await;
    let first = encoded(&app, &path, "gzip").await;
    let etag = header(&first, "etag").expect("an ETag").to_owned();
    let again = app
        .server
        .client
        .get(app.server.url(&path))
        .header(ACCEPT_ENCODING, "gzip")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
}
