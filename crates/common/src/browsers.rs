//! What web and mobile clients get from every service beside the API itself (API.md,
//! "Conventions"): cross-origin calls from the configured origins, and compressed
//! responses.

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower::{Service, ServiceExt as _};
use tower_http::compression::predicate::SizeAbove;
use tower_http::compression::{Compression, CompressionLevel};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Responses at least this large are compressed for clients that accept it.
pub const COMPRESS_ABOVE: u16 = 1024;

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for `origins` (`CORS_ALLOWED_ORIGINS`): their preflights are answered and their
/// calls may read the answers, with the request and response headers API.md lists. Any
/// other origin gets no grant (and a browser then refuses the page the answer). With no
/// origins configured the layer is left out: no cross-origin call is granted at all.
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

/// A content coding the API answers in, beside the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    /// The coding the request's `Accept-Encoding` prefers of the two, as tower-http's
    /// layer chooses: the highest q-value above 0 (1 when not given), brotli on a tie;
    /// `None` when the client accepts neither (or sent no header).
    pub fn preferred(headers: &HeaderMap) -> Option<Self> {
        let mut best: Option<(u16, Self)> = None;
        let offered = headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|value| value.to_str().ok());
        for item in offered.flat_map(|value| value.split(',')) {
            let mut parts = item.split(';');
            let encoding = match parts.next().unwrap_or("").trim() {
                coding if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") => Self::Gzip,
                coding if coding.eq_ignore_ascii_case("br") => Self::Brotli,
                _ => continue,
            };
            let Some(q) = q_value(parts) else { continue };
            let rank = (q, encoding == Self::Brotli);
            if q > 0 && best.is_none_or(|(bq, b)| rank > (bq, b == Self::Brotli)) {
                best = Some((q, encoding));
            }
        }
        best.map(|(_, encoding)| encoding)
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
        })
    }

    /// `body` encoded, at a level worth its cost for a body encoded once and sent many
    /// times (a cached answer): gzip's default 6, brotli's 5.
    pub fn compress(self, body: &[u8]) -> Bytes {
        let written = match self {
            Self::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(body).and_then(|()| encoder.finish())
            }
            Self::Brotli => {
                let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
                encoder.write_all(body).and_then(|()| encoder.flush()).map(|()| encoder.into_inner())
            }
        };
        // Writing into a Vec cannot fail.
        Bytes::from(written.unwrap_or_default())
    }
}

/// A q-value among an item's parameters, in thousandths: 1000 when absent, `None` when
/// malformed (the item is then ignored, as tower-http ignores it).
fn q_value<'a>(mut parameters: impl Iterator<Item = &'a str>) -> Option<u16> {
    let Some(q) = parameters.find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q="))) else {
        return Some(1000);
    };
    let q: f32 = q.trim().parse().ok().filter(|q: &f32| (0.0..=1.0).contains(q))?;
    Some((q * 1000.0).round() as u16)
}

/// `next` with its answer compressed, gzip or brotli as the request prefers, when it is at
/// least [`COMPRESS_ABOVE`] bytes (smaller ones gain less than the encoding costs) and not
/// encoded already (a cached answer's kept copy, [`crate::cache::Cached::encoded`]). At the
/// fastest levels: JSON compresses well even so, and a request should not wait on the
/// encoder. The API serves JSON, text and the documentation only (no images, gRPC or event
/// streams, which tower-http's default predicate also checks for). Called only for
/// requests that accept an encoding ([`Encoding::preferred`]): the layer's wrapping of
/// every answer cost a few µs of a cached read, measured, for clients that accept none.
pub async fn compressed<S>(service: S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Send,
    S::Future: Send,
{
    let service = Compression::new(service)
        .gzip(true)
        .br(true)
        .quality(CompressionLevel::Fastest)
        .compress_when(SizeAbove::new(COMPRESS_ABOVE));
    match service.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preferred(accept: &[&str]) -> Option<Encoding> {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        Encoding::preferred(&headers)
    }

    #[test]
    fn the_preferred_coding_is_the_highest_q_value_with_brotli_on_a_tie() {
        assert_eq!(preferred(&[]), None);
        assert_eq!(preferred(&["identity"]), None);
        assert_eq!(preferred(&["deflate, zstd"]), None);
        assert_eq!(preferred(&["gzip"]), Some(Encoding::Gzip));
        assert_eq!(preferred(&["GZIP;q=0.8"]), Some(Encoding::Gzip));
        assert_eq!(preferred(&["gzip, deflate, br, zstd"]), Some(Encoding::Brotli));
        assert_eq!(preferred(&["br;q=0.5, gzip"]), Some(Encoding::Gzip));
        assert_eq!(preferred(&["gzip", "br;q=0.9"]), Some(Encoding::Gzip));
        assert_eq!(preferred(&["br;q=0, gzip;q=0"]), None);
        assert_eq!(preferred(&["br;q=2, gzip;q=abc"]), None, "malformed q-values are ignored");
    }
}
