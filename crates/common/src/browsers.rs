//! What web and mobile clients get from every service beside the API itself (API.md,
//! "Conventions"): cross-origin calls from the configured origins, and compressed
//! responses.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Responses at least this large are compressed for clients that accept it.
pub const COMPRESS_ABOVE: u16 = 1024;

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for `origins` (`CORS_ALLOWED_ORIGINS`): their preflights are answered and their
/// calls may read the answers, with the request and response headers API.md lists. Any
/// other origin gets no grant (and a browser then refuses the page the answer); with no
/// origins configured, no cross-origin call is granted at all.
pub fn cors(origins: &[HeaderValue]) -> CorsLayer {
    let h = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, h("idempotency-key"), h("x-request-id")])
        .expose_headers([
            h("x-request-id"),
            h("ratelimit-limit"),
            h("ratelimit-remaining"),
            h("ratelimit-reset"),
            header::RETRY_AFTER,
            h("idempotent-replayed"),
            header::ETAG,
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// gzip or brotli, as the client's `Accept-Encoding` prefers, for responses of at least
/// [`COMPRESS_ABOVE`] bytes (smaller ones gain less than the encoding costs), never for
/// event streams or images. Both at their fastest levels: JSON compresses well even so,
/// and a request should not wait on the encoder.
pub fn compression() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .quality(CompressionLevel::Fastest)
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE)))
}
