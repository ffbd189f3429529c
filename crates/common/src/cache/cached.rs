//! An encoded response as both cache levels keep it, and its entity tag.

use std::hash::Hasher;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::http::HeaderValue;

use crate::browsers::{COMPRESS_ABOVE, Encoding};

/// An encoded response as both levels serve it: the JSON body and its entity tag, made
/// once when the entry is filled, so a hit and a `304` cost no encoding; and, for a body
/// large enough to be sent compressed, its gzip and brotli copies, each made the first
/// time a client asks for it and kept with the entry (shared by its clones), so a hit
/// costs no compression either. A smaller body (a product) carries no room for copies:
/// the level holds a hundred thousand of them.
#[derive(Debug, Clone)]
pub struct Cached {
    pub json: Bytes,
    pub etag: HeaderValue,
    compressed: Option<Arc<Compressed>>,
}

#[derive(Debug, Default)]
struct Compressed {
    gzip: OnceLock<Bytes>,
    brotli: OnceLock<Bytes>,
}

impl Cached {
    pub fn new(json: Bytes) -> Self {
        let etag = etag_of(&[&json]);
        Self::tagged(json, etag)
    }

    /// `json` under a tag made otherwise (a page's, of its products' tags). Both are kept
    /// in one allocation of their exact size: a body arrives with room to spare (a
    /// growing `Vec`, Redis's reply with its version prefix), and the level holds a
    /// hundred thousand of them.
    pub fn tagged(json: Bytes, etag: HeaderValue) -> Self {
        let mut both = Vec::with_capacity(json.len() + etag.len());
        both.extend_from_slice(&json);
        both.extend_from_slice(etag.as_bytes());
        let both = Bytes::from(both);
        let etag = HeaderValue::from_maybe_shared(both.slice(json.len()..)).unwrap_or(etag);
        let json = both.slice(..json.len());
        let compressed = (json.len() >= usize::from(COMPRESS_ABOVE)).then(Arc::default);
        Self { json, etag, compressed }
    }

    /// `null`: the loader found nothing (cached too, briefly).
    pub fn is_null(&self) -> bool {
        self.json.as_ref() == b"null"
    }

    /// Whether the body is large enough to be sent compressed ([`COMPRESS_ABOVE`]).
    pub fn is_compressible(&self) -> bool {
        self.compressed.is_some()
    }

    /// The body in `encoding`, compressed on the first call and kept for the next; `None`
    /// for a body too small to be sent compressed.
    pub fn encoded(&self, encoding: Encoding) -> Option<Bytes> {
        let copies = self.compressed.as_deref()?;
        let slot = match encoding {
            Encoding::Gzip => &copies.gzip,
            Encoding::Brotli => &copies.brotli,
        };
        Some(slot.get_or_init(|| encoding.compress(&self.json)).clone())
    }
}

/// What a first-level entry takes, in bytes, besides the level's own overhead for it: the
/// level's bound (`L1_CACHE_BYTES`) counts it when the entry is filled.
pub trait Footprint: std::any::Any + Send + Sync {
    fn footprint(&self) -> usize;
}

impl Footprint for Cached {
    /// The JSON, and for a body large enough to be sent compressed room for its copies
    /// (JSON shrinks to a fifth or less in either coding).
    fn footprint(&self) -> usize {
        let len = self.json.len();
        if self.is_compressible() { len + len / 2 } else { len }
    }
}

/// A weak entity tag over `parts`: the same bytes give the same tag on every replica (a
/// fixed-key hash), so a client's tag from one replica is good on another. Weak, because
/// the gzip and brotli encodings of an answer carry the same tag (RFC 9110 8.8.1: they are
/// the same content, not the same bytes); `If-None-Match` compares weakly anyway.
pub fn etag_of(parts: &[&[u8]]) -> HeaderValue {
    // SipHash with fixed keys: the same tag in every process of one build.
    let mut hasher = std::hash::DefaultHasher::new();
    for part in parts {
        hasher.write(part);
        hasher.write_u8(0xff);
    }
    let tag = format!("W/\"{:016x}\"", hasher.finish());
    HeaderValue::from_str(&tag).expect("hex digits in quotes are a valid header value")
}
