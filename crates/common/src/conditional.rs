//! HTTP caching of catalogue reads (API.md): an `ETag` on every answer, `304 Not
//! Modified` when `If-None-Match` names the current tag, `Cache-Control` that lets a
//! CDN or the gateway keep anonymous answers for a few seconds, and the entry's kept
//! compressed copy for a client that accepts one.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::browsers::Encoding;
use crate::cache::Cached;

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

/// What a catalogue read's answer depends on in its request: whether it is anonymous,
/// the tags it already holds, the coding it prefers. An extractor, so that a read takes
/// these three from the request instead of a copy of all its headers.
#[derive(Debug, Default)]
pub struct ReadHeaders {
    anonymous: bool,
    if_none_match: Vec<HeaderValue>,
    encoding: Option<Encoding>,
}

impl ReadHeaders {
    pub fn of(headers: &HeaderMap) -> Self {
        Self {
            anonymous: !headers.contains_key(header::AUTHORIZATION),
            if_none_match: headers.get_all(header::IF_NONE_MATCH).iter().cloned().collect(),
            encoding: Encoding::preferred(headers),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReadHeaders {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.headers))
    }
}

/// The answer to a catalogue read of `cached`, for a request with `headers`. A body large
/// enough to be compressed goes out in the coding the client prefers, from the entry's
/// kept copy, with `Vary: Accept-Encoding` (on the `304` too, as RFC 9110 15.4.5 asks).
pub fn respond(headers: &ReadHeaders, cached: &Cached) -> Response {
    let cache_control = HeaderValue::from_static(if headers.anonymous { PUBLIC_MAX_AGE } else { PRIVATE });
    let not_modified = headers.if_none_match.iter().any(|value| matches(value, &cached.etag));
    let compressible = cached.is_compressible();
    let mut response = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        let encoding = headers.encoding.filter(|_| compressible);
        let body = encoding.and_then(|encoding| cached.encoded(encoding)).unwrap_or_else(|| cached.json.clone());
        let mut response =
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        if let Some(encoding) = encoding {
            response.headers_mut().insert(header::CONTENT_ENCODING, encoding.header_value());
        }
        response
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::ETAG, cached.etag.clone());
    response_headers.insert(header::CACHE_CONTROL, cache_control);
    if compressible {
        response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;

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
        let entry = Cached::tagged(Bytes::from_static(b"{}"), HeaderValue::from_static("\"abc\""));
        let etag = entry.etag.clone();
        let mut headers = HeaderMap::new();
        let fresh = respond(&ReadHeaders::of(&headers), &entry);
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], PUBLIC_MAX_AGE);
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        let cached = respond(&ReadHeaders::of(&headers), &entry);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], etag);
        assert_eq!(cached.headers()[header::CACHE_CONTROL], PRIVATE);
        assert!(cached.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn a_large_answer_goes_out_in_the_preferred_coding_from_one_kept_copy() {
        let json = Bytes::from(format!("[{}]", vec!["{\"name\":\"Oak desk\"}"; 100].join(",")));
        let entry = Cached::new(json.clone());
        let mut headers = HeaderMap::new();
        let plain = respond(&ReadHeaders::of(&headers), &entry);
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain.headers()[header::VARY], "accept-encoding");
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate"));
        let gzip = respond(&ReadHeaders::of(&headers), &entry);
        assert_eq!(gzip.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gzip.headers()[header::VARY], "accept-encoding");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&entry.encoded(Encoding::Gzip).unwrap()[..]),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, json);
        let kept = (entry.encoded(Encoding::Gzip).unwrap(), entry.clone().encoded(Encoding::Gzip).unwrap());
        assert!(kept.0.as_ptr() == kept.1.as_ptr(), "kept");
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0.5, br"));
        let brotli = respond(&ReadHeaders::of(&headers), &entry);
        assert_eq!(brotli.headers()[header::CONTENT_ENCODING], "br");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut brotli::Decompressor::new(&entry.encoded(Encoding::Brotli).unwrap()[..], 4096),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, json);
        // A small answer is sent as it is, whatever the client accepts.
        let small = Cached::new(Bytes::from_static(b"{}"));
        assert!(small.encoded(Encoding::Gzip).is_none(), "no copies kept for a small body");
        let small = respond(&ReadHeaders::of(&headers), &small);
        assert!(small.headers().get(header::CONTENT_ENCODING).is_none() && small.headers().get(header::VARY).is_none());
    }
}
