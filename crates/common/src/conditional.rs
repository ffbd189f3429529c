//! HTTP caching of catalogue reads (API.md): an `ETag` on every answer, `304 Not
//! Modified` when `If-None-Match` names the current tag, and `Cache-Control` that lets a
//! CDN or the gateway keep anonymous answers for a few seconds.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a shared cache may keep an anonymous catalogue answer.
pub const PUBLIC_MAX_AGE: &str = "public, max-age=5";

/// An authenticated read (an admin checking a write, say) is kept by no shared cache and
/// revalidated by the client every time: a `304` makes that cheap.
const PRIVATE: &str = "private, no-cache";

/// Whether `if_none_match` (the request's header) names `etag`. Comparison is weak, as
/// RFC 9110 says for `If-None-Match`: `W/"x"` matches `"x"`; `*` matches any.
pub fn matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else { return false };
    let ours = etag.as_bytes().strip_prefix(b"W/").unwrap_or(etag.as_bytes());
    list.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// The answer to a catalogue read of `json` tagged `etag`, for a request with `headers`.
pub fn respond(headers: &HeaderMap, json: Bytes, etag: &HeaderValue) -> Response {
    let anonymous = !headers.contains_key(header::AUTHORIZATION);
    let cache_control = HeaderValue::from_static(if anonymous { PUBLIC_MAX_AGE } else { PRIVATE });
    let not_modified = headers.get_all(header::IF_NONE_MATCH).iter().any(|value| matches(value, etag));
    let mut response = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::ETAG, etag.clone());
    response_headers.insert(header::CACHE_CONTROL, cache_control);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let etag = HeaderValue::from_static("\"abc\"");
        for matching in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            assert!(matches(&HeaderValue::from_static(matching), &etag), "{matching}");
        }
        for other in ["\"abd\"", "abc", "", "\"abc"] {
            assert!(!matches(&HeaderValue::from_static(other), &etag), "{other}");
        }
    }

    #[test]
    fn a_matching_tag_is_answered_304_without_a_body() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut headers = HeaderMap::new();
        let fresh = respond(&headers, Bytes::from_static(b"{}"), &etag);
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], PUBLIC_MAX_AGE);
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        let cached = respond(&headers, Bytes::from_static(b"{}"), &etag);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], etag);
        assert_eq!(cached.headers()[header::CACHE_CONTROL], PRIVATE);
        assert!(cached.headers().get(header::CONTENT_TYPE).is_none());
    }
}
