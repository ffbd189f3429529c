//! `Idempotency-Key` (API.md, "Conventions"): the same key with the same body replays the
//! first response (with `Idempotent-Replayed: true`); the same key with another body is
//! `422 idempotency_key_reused`; the same key while the first request is still running is
//! `409 request_in_progress`. Keys are scoped (per user) and live 24 hours.
//!
//! One leased row per key, in the service's `idempotency_keys`, is the whole mechanism:
//! [`Idempotency::begin`] claims it in one statement before the work starts and answers
//! [`Begin::Fresh`] (the key is this request's, for a lease), [`Begin::Replay`] or
//! [`Begin::InProgress`]; the work's own transaction completes the claim with the answer
//! ([`Claim::complete`], or the same update inside the work's statement), so the answer
//! exists exactly when the effect does. A request that stops half way (a crash, a timeout)
//! leaves the claim with its `progress` (what it recorded for a retry: an order's id, a
//! payment's); once its lease has run out, a retry with the same request takes the key
//! over and resumes from there, and the service's recovery job finishes or undoes what no
//! retry comes back for. Work a client cannot repeat (a checkout without a key) is claimed
//! under a key of its own ([`Idempotency::unkeyed`]), for the recovery job to find alike.

use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

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

/// An answer stored under a key: what it answered, and the fingerprint of the request it
/// answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub fingerprint: Vec<u8>,
    pub status: i16,
    pub body: Vec<u8>,
}

/// What [`Idempotency::begin`] found.
#[derive(Debug)]
pub enum Begin<P> {
    /// The key is this request's now: do the work, and complete the claim in its
    /// transaction.
    Fresh(Claim<P>),
    /// Done before: answer this.
    Replay(Response),
    /// A request with the key and this body is still running (`409 request_in_progress`).
    InProgress,
}

/// A key held by this request (for its lease), with what the holder before it recorded
/// when it stopped half way.
#[derive(Debug)]
pub struct Claim<P> {
    scope: String,
    key: String,
    id: Uuid,
    client_key: bool,
    /// What an earlier holder recorded and left unfinished, for this one to resume; `None`
    /// for a key used for the first time.
    pub resumed: Option<P>,
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

/// What [`Idempotency::begin`]'s statement found: the claim it made (with the holder
/// count and progress), or the row another request holds or answered.
#[derive(sqlx::FromRow)]
struct BeginRow {
    claimed: bool,
    attempts: Option<i32>,
    progress: Option<serde_json::Value>,
    fingerprint: Option<Vec<u8>>,
    status: Option<i16>,
    body: Option<Vec<u8>>,
}

/// The key of work a client cannot repeat: a control character first, which no header
/// can carry, so that it never meets a client's key.
const UNKEYED: char = '\u{1}';

impl Idempotency {
    /// A key for work that came without one (`name`, unique to it), so that it is claimed
    /// and recovered like keyed work; it is never replayed.
    pub fn unkeyed(name: &str) -> Self {
        Self { key: format!("{UNKEYED}{name}"), fingerprint: Vec::new() }
    }

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

    /// Claims the key for `scope` (the caller) for `lease`, in one statement committed on
    /// its own, recording `progress` for a later holder should this one stop half way.
    /// The key is this request's if it is new, if its answer is more than 24 hours old,
    /// or if the same request left it unfinished and its lease has run out (then
    /// [`Claim::resumed`] is what that request recorded). Used with another request: `422`.
    pub async fn begin<P>(
        &self,
        db: impl PgExecutor<'_>,
        scope: &str,
        lease: Duration,
        progress: &P,
    ) -> Result<Begin<P>, ApiError>
    where
        P: Serialize + DeserializeOwned,
    {
        let id = Uuid::now_v7();
        let progress = serde_json::to_value(progress).map_err(ApiError::internal)?;
        // A key another request inserted after this statement's snapshot conflicts but is
        // not seen by the second part: no row, which is a request still running.
        let row: Option<BeginRow> = sqlx::query_as(
            "WITH claimed AS (
                     INSERT INTO idempotency_keys AS k (scope, key, fingerprint, claim, running_until, progress)
                     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)
                     ON CONFLICT (scope, key) DO UPDATE
                     SET claim = EXCLUDED.claim, running_until = EXCLUDED.running_until,
                         fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL,
                         attempts = CASE WHEN k.status IS NULL THEN k.attempts + 1 ELSE 1 END,
                         progress = CASE WHEN k.status IS NULL THEN k.progress ELSE EXCLUDED.progress END,
                         created_at = CASE WHEN k.status IS NULL THEN k.created_at ELSE now() END
                     WHERE (k.status IS NOT NULL AND k.created_at <= now() - interval '24 hours')
                        OR (k.status IS NULL AND k.running_until <= now() AND k.fingerprint = EXCLUDED.fingerprint)
                     RETURNING k.attempts, k.progress)
                 SELECT true AS claimed, attempts, progress, NULL::bytea AS fingerprint, NULL::smallint AS status,
                        NULL::bytea AS body
                 FROM claimed
                 UNION ALL
                 SELECT false, NULL, NULL, fingerprint, status, body FROM idempotency_keys
                 WHERE scope = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)",
        )
        .bind(scope)
        .bind(&self.key)
        .bind(&self.fingerprint)
        .bind(id)
        .bind(lease.as_secs_f64())
        .bind(progress)
        .fetch_optional(db)
        .await?;
        let Some(BeginRow { claimed, attempts, progress, fingerprint, status, body }) = row else {
            return Ok(Begin::InProgress);
        };
        if claimed {
            let resumed = match (attempts, progress) {
                (Some(attempts), Some(progress)) if attempts > 1 => {
                    Some(serde_json::from_value(progress).map_err(ApiError::internal)?)
                }
                _ => None,
            };
            let client_key = !self.key.starts_with(UNKEYED);
            return Ok(Begin::Fresh(Claim { scope: scope.to_owned(), key: self.key.clone(), id, client_key, resumed }));
        }
        let fingerprint = fingerprint.unwrap_or_default();
        match (status, body) {
            (Some(status), Some(body)) => self.replay(StoredAnswer { fingerprint, status, body }).map(Begin::Replay),
            _ if fingerprint != self.fingerprint => Err(Self::reused()),
            _ => Ok(Begin::InProgress),
        }
    }

    /// The answer stored under this key for `scope`, replayed, without claiming the key:
    /// for a request that lost its claim and must tell whether a request with the key
    /// finished meanwhile.
    pub async fn answered(&self, db: impl PgExecutor<'_>, scope: &str) -> Result<Option<Response>, ApiError> {
        let stored: Option<(Vec<u8>, i16, Vec<u8>)> = sqlx::query_as(
            "SELECT fingerprint, status, body FROM idempotency_keys
             WHERE scope = $1 AND key = $2 AND status IS NOT NULL AND created_at > now() - interval '24 hours'",
        )
        .bind(scope)
        .bind(&self.key)
        .fetch_optional(db)
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
}

/// Takes over, for `lease`, up to `limit` keys whose holders stopped before finishing
/// (their leases ran out and no retry came back): for a recovery job to finish or undo
/// their work from what they recorded ([`Claim::resumed`]) and complete or abandon them.
/// Replicas share the work with `SKIP LOCKED`.
pub async fn take_over_lapsed<P: DeserializeOwned>(
    db: impl PgExecutor<'_>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Claim<P>>, ApiError> {
    let rows: Vec<(String, String, Uuid, Option<serde_json::Value>)> = sqlx::query_as(
        "UPDATE idempotency_keys k
         SET claim = gen_random_uuid(), running_until = now() + make_interval(secs => $1), attempts = k.attempts + 1
         FROM (SELECT scope, key FROM idempotency_keys WHERE status IS NULL AND running_until < now()
               ORDER BY running_until LIMIT $2 FOR UPDATE SKIP LOCKED) due
         WHERE k.scope = due.scope AND k.key = due.key
         RETURNING k.scope, k.key, k.claim, k.progress",
    )
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(scope, key, id, progress)| {
            let resumed = progress.map(serde_json::from_value).transpose().map_err(ApiError::internal)?;
            let client_key = !key.starts_with(UNKEYED);
            Ok(Claim { scope, key, id, client_key, resumed })
        })
        .collect()
}

impl<P> Claim<P> {
    /// The caller the key is scoped to.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key, as stored.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This holder's id: an update that completes the claim inside the work's own
    /// statement guards on it, as [`Claim::complete`] does.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Whether a client sent the key (and may replay its answer), rather than
    /// [`Idempotency::unkeyed`] made it.
    pub fn is_client_key(&self) -> bool {
        self.client_key
    }

    /// Stores the answer, in the work's transaction; a key no client can send is deleted
    /// instead. `false` when this request no longer holds the key (its lease ran out and a
    /// retry or the recovery job took it over): the work must then be rolled back.
    pub async fn complete(
        &self,
        tx: &mut PgConnection,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<bool, ApiError> {
        let done = if self.client_key {
            let body = serde_json::to_vec(body).map_err(ApiError::internal)?;
            sqlx::query(
                "UPDATE idempotency_keys SET status = $4, body = $5, running_until = NULL, progress = NULL
                 WHERE scope = $1 AND key = $2 AND claim = $3",
            )
            .bind(&self.scope)
            .bind(&self.key)
            .bind(self.id)
            .bind(status.as_u16() as i16)
            .bind(body)
            .execute(tx)
            .await?
        } else {
            self.forget(tx).await?
        };
        Ok(done.rows_affected() == 1)
    }

    /// Gives the key up with nothing done: a retry starts afresh.
    pub async fn abandon(&self, db: impl PgExecutor<'_>) -> Result<(), ApiError> {
        self.forget(db).await?;
        Ok(())
    }

    async fn forget(&self, db: impl PgExecutor<'_>) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND claim = $3")
            .bind(&self.scope)
            .bind(&self.key)
            .bind(self.id)
            .execute(db)
            .await
    }

    /// Ends this request's lease on work whose outcome it does not know, so that a retry
    /// (or the recovery job) takes it over at once.
    pub async fn lapse(&self, db: impl PgExecutor<'_>) -> Result<(), ApiError> {
        sqlx::query("UPDATE idempotency_keys SET running_until = now() WHERE scope = $1 AND key = $2 AND claim = $3")
            .bind(&self.scope)
            .bind(&self.key)
            .bind(self.id)
            .execute(db)
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
