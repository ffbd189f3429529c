//! `Idempotency-Key` (API.md, "Conventions"): the same key with the same body replays the
//! first response (with `Idempotent-Replayed: true`); the same key with another body is
//! `422 idempotency_key_reused`; the same key while the first request is still running is
//! `409 request_in_progress`. Keys are scoped (per user) and live 24 hours.
//!
//! The handler runs its effect in one transaction and calls [`Idempotency::begin`] first in
//! it: a transaction-scoped advisory lock on (scope, key) marks the request as running
//! (a concurrent one fails to take it and gets the 409; a crash releases it), and the
//! stored response, if any, is replayed. [`Idempotency::finish`] stores the response in
//! the same transaction as the effect, so the record exists exactly when the effect does.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{ApiError, ErrorCode};
use crate::extract::{Json, read_body};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A JSON body with its `Idempotency-Key`, if the client sent one, and a fingerprint of
/// what was asked: method, path and the body's JSON value (key order and whitespace do not
/// matter, API.md).
#[derive(Debug)]
pub struct Idempotent<T> {
    pub body: T,
    pub key: Option<Idempotency>,
}

/// A valid key, ready to be scoped to a caller.
#[derive(Debug, Clone)]
pub struct Idempotency {
    key: String,
    fingerprint: Vec<u8>,
}

/// An `idempotency_keys` row younger than 24 hours: the answer to replay, with the
/// fingerprint of the request it answered. A service that reads it beside what it reads
/// for the operation (one statement) builds it with [`StoredAnswer::from_columns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub fingerprint: Vec<u8>,
    pub status: i16,
    pub body: Vec<u8>,
}

impl StoredAnswer {
    /// The row's columns as a `LEFT JOIN` gives them: all present, or no row.
    pub fn from_columns(fingerprint: Option<Vec<u8>>, status: Option<i16>, body: Option<Vec<u8>>) -> Option<Self> {
        Some(Self { fingerprint: fingerprint?, status: status?, body: body? })
    }
}

/// What [`Idempotency::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// First time: do the work, then [`Idempotency::finish`].
    Fresh,
    /// Done before: answer this.
    Replay(Response),
}

impl<S, T> FromRequest<S> for Idempotent<T>
where
    T: crate::extract::Body,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let key = match request.headers().get(&IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => {
                let key = value.to_str().ok().filter(|k| (1..=255).contains(&k.len())).ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
                })?;
                Some(key.to_owned())
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(request.method().as_str());
        hasher.update([0]);
        hasher.update(request.uri().path());
        hasher.update([0]);
        let (parts, body) = request.into_parts();
        let bytes = read_body(Request::from_parts(parts.clone(), body), state).await?;
        hasher.update(canonical_json(&bytes));
        let fingerprint = hasher.finalize().to_vec();
        let Json(body) =
            Json::<T>::from_request(Request::from_parts(parts, axum::body::Body::from(bytes)), state).await?;
        Ok(Self { body, key: key.map(|key| Idempotency { key, fingerprint }) })
    }
}

/// A body as its fingerprint sees it: its JSON value written again, without whitespace and
/// with every object's keys in order (serde_json's map is sorted unless its
/// `preserve_order` feature is on, which the test below would catch), so that two
/// encodings of one value are the same bytes. Bytes that are not JSON are taken as they
/// are (the extractor refuses them anyway).
fn canonical_json(bytes: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .and_then(|value| serde_json::to_vec(&value))
        .unwrap_or_else(|_| bytes.to_vec())
}

impl Idempotency {
    /// The key as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// What was asked with it (method, path, body), to tell a retry from a reuse.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// The `409 request_in_progress` answer.
    pub fn in_progress() -> ApiError {
        ApiError::new(ErrorCode::RequestInProgress)
            .with_detail("a request with this Idempotency-Key is still running; retry shortly")
    }

    /// The `422 idempotency_key_reused` answer.
    pub fn reused() -> ApiError {
        ApiError::new(ErrorCode::IdempotencyKeyReused)
            .with_detail("this Idempotency-Key was used with a different request")
    }

    /// Claims the key for `scope` (the caller) inside `tx`, the transaction of the effect.
    pub async fn begin(&self, tx: &mut PgConnection, scope: &str) -> Result<Begin, ApiError> {
        let claimed: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '\u{1f}' || $1 || '\u{1f}' || $2, 0))")
            .bind(scope)
            .bind(&self.key)
            .fetch_one(&mut *tx)
            .await?;
        if !claimed {
            return Err(Self::in_progress());
        }
        Ok(match self.stored(tx, scope).await? {
            Some(response) => Begin::Replay(response),
            None => Begin::Fresh,
        })
    }

    /// The stored response to replay for `scope`, if the key has one, without claiming it:
    /// for a request that claimed the operation some other way and must make sure that no
    /// request with the key finished meanwhile.
    pub async fn stored(&self, conn: &mut PgConnection, scope: &str) -> Result<Option<Response>, ApiError> {
        let stored: Option<(Vec<u8>, i16, Vec<u8>)> = sqlx::query_as(
            "SELECT fingerprint, status, body FROM idempotency_keys
             WHERE scope = $1 AND key = $2 AND created_at > now() - interval '24 hours'",
        )
        .bind(scope)
        .bind(&self.key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((fingerprint, status, body)) = stored else { return Ok(None) };
        self.replay(StoredAnswer { fingerprint, status, body }).map(Some)
    }

    /// The answer stored for this key, replayed; `422` if it was stored for another
    /// request.
    pub fn replay(&self, stored: StoredAnswer) -> Result<Response, ApiError> {
        if stored.fingerprint != self.fingerprint {
            return Err(Self::reused());
        }
        let status = StatusCode::from_u16(stored.status as u16).map_err(ApiError::internal)?;
        let body = stored.body;
        let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
        response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
        Ok(response)
    }

    /// Stores the response to replay, in the transaction of the effect. A record older
    /// than 24 hours under the same key is replaced.
    pub async fn finish(
        &self,
        tx: &mut PgConnection,
        scope: &str,
        status: StatusCode,
        body: &impl serde::Serialize,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_vec(body).map_err(ApiError::internal)?;
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scope, key) DO UPDATE
             SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = EXCLUDED.body, created_at = now()",
        )
        .bind(scope)
        .bind(&self.key)
        .bind(&self.fingerprint)
        .bind(status.as_u16() as i16)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_json;

    #[test]
    fn one_json_value_has_one_canonical_form() {
        let a = canonical_json(br#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#);
        let b = canonical_json(b"{\n  \"a\":null,\"b\":[1,{\"x\":\"s\",\"y\":2}]\n}");
        assert_eq!(a, b);
        assert_eq!(a, br#"{"a":null,"b":[1,{"x":"s","y":2}]}"#);
        assert_ne!(canonical_json(br#"{"b":[2,1]}"#), canonical_json(br#"{"b":[1,2]}"#), "arrays keep their order");
        assert_ne!(canonical_json(br#"{"a":"5"}"#), canonical_json(br#"{"a":5}"#));
        assert_eq!(canonical_json(b"not json"), b"not json");
    }
}
