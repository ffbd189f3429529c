//! Authentication shared by every service: HS256 access tokens, their revocation, the
//! `AuthUser` / `AdminUser` extractors, and password hashing off the async runtime.
//!
//! Every service validates access tokens itself (no call to the user service per
//! request); a revoked session is refused through this process's copy of the durable
//! record ([`crate::revocations`]), so it stays refused whatever happens to the cache.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::revocations::Revocations;

/// `iss` of every access token.
pub const ISSUER: &str = "shop";
/// `aud` of every access token: the public API.
pub const AUDIENCE: &str = "shop-api";
/// `aud` of service tokens: `/internal/*`, which no user token opens.
pub const INTERNAL_AUDIENCE: &str = "shop-internal";
/// How long a service token lives; callers sign a fresh one per request.
const SERVICE_TOKEN_TTL: i64 = 60;

/// The claims of a service-to-service token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceClaims {
    /// The calling service (`order`, `payment`).
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    /// The token's own id, so it can be revoked alone.
    pub jti: Uuid,
    /// The login session (refresh-token family) the token was issued for.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// Issues and checks access tokens. One per process, shared through `Arc`.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    internal_validation: Validation,
    access_ttl: Duration,
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("access_ttl", &self.access_ttl).finish_non_exhaustive()
    }
}

/// A freshly signed access token.
#[derive(Debug)]
pub struct AccessToken {
    pub token: String,
    pub claims: Claims,
    pub expires_in: u64,
}

impl Authenticator {
    pub fn new(secret: &SecretString, access_ttl: Duration, revocations: Arc<Revocations>) -> Self {
        let key = secret.expose_secret().as_bytes();
        // The algorithm is pinned: a token that names another one (`none`, RS256 with our
        // secret as a "public key") is refused before its signature is even looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut internal_validation = validation.clone();
        internal_validation.set_audience(&[INTERNAL_AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            internal_validation,
            access_ttl,
            revocations,
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// The revoked sessions this process refuses.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn issue(&self, user_id: Uuid, role: Role, session_id: Uuid) -> Result<AccessToken, ApiError> {
        let now = Utc::now().timestamp();
        let expires_in = self.access_ttl.as_secs().max(1);
        let claims = Claims {
            sub: user_id,
            role,
            jti: Uuid::now_v7(),
            sid: session_id,
            iat: now,
            exp: now + expires_in as i64,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok(AccessToken { token, claims, expires_in })
    }

    /// Verifies signature, algorithm, issuer, audience and expiry, then revocation.
    pub async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "the access token has expired",
                ErrorKind::ImmatureSignature => "the access token is not valid yet",
                _ => "the access token is invalid",
            };
            ApiError::unauthorized(why)
        })?;
        if self.revocations.is_revoked(data.claims.sid).await {
            return Err(ApiError::unauthorized("the access token has been revoked"));
        }
        Ok(data.claims)
    }

    /// A short-lived token with which `service` calls another service's `/internal/*`.
    pub fn service_token(&self, service: &str) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = ServiceClaims {
            sub: service.to_owned(),
            iat: now,
            exp: now + SERVICE_TOKEN_TTL,
            iss: ISSUER.to_owned(),
            aud: INTERNAL_AUDIENCE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(ApiError::internal)
    }

    pub fn verify_service(&self, token: &str) -> Result<ServiceClaims, ApiError> {
        jsonwebtoken::decode::<ServiceClaims>(token, &self.decoding, &self.internal_validation)
            .map(|data| data.claims)
            .map_err(|_| ApiError::unauthorized("a valid service token is required"))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The authenticated caller, from `Authorization: Bearer <access token>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Role,
    pub claims: Claims,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller of `parts`, verified once per request (kept in its extensions).
    async fn of(parts: &mut Parts, auth: &Authenticator) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token =
            bearer(&parts.headers).ok_or_else(|| ApiError::unauthorized("a bearer access token is required"))?;
        let claims = auth.verify(token).await?;
        let user = AuthUser { id: claims.sub, role: claims.role, claims };
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// An authenticated caller with the `admin` role; anyone else gets 403 (or 401 without
/// a valid token).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// Another service of the platform calling `/internal/*` with a service token.
#[derive(Debug, Clone)]
pub struct ServiceCaller(pub ServiceClaims);

/// An extractor of a caller: what `$read` makes of the request's parts with the state's
/// [`Authenticator`].
macro_rules! caller_extractor {
    ($caller:ty, |$parts:ident, $auth:ident| $read:expr) => {
        impl<S> FromRequestParts<S> for $caller
        where
            Arc<Authenticator>: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts($parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                let $auth = Arc::<Authenticator>::from_ref(state);
                $read
            }
        }
    };
}

caller_extractor!(AuthUser, |parts, auth| AuthUser::of(parts, &auth).await);
caller_extractor!(AdminUser, |parts, auth| {
    let user = AuthUser::of(parts, &auth).await?;
    if user.is_admin() { Ok(Self(user)) } else { Err(ApiError::new(ErrorCode::Forbidden)) }
});
caller_extractor!(ServiceCaller, |parts, auth| {
    let token = bearer(&parts.headers).ok_or_else(|| ApiError::unauthorized("a valid service token is required"))?;
    Ok(Self(auth.verify_service(token)?))
});

/// bcrypt hashing and verification on the blocking pool, at most one per core at a time,
/// so a burst of logins queues for CPU instead of starving the async workers that serve
/// every other request.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    /// A real hash of a random password at our cost, verified against when the account
    /// does not exist, so that an unknown email costs as much time as a wrong password.
    dummy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("cost", &self.cost).finish_non_exhaustive()
    }
}

/// bcrypt reads at most 72 bytes of its input and stops at a NUL byte; hashing the
/// password with SHA-256 first (base64, 44 bytes) makes all of a 128-character password
/// count, whatever bytes it holds.
fn prehash(password: &str) -> String {
    STANDARD.encode(Sha256::digest(password.as_bytes()))
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> anyhow::Result<Self> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dummy =
            tokio::task::spawn_blocking(move || bcrypt::hash(prehash(&Uuid::new_v4().to_string()), cost)).await??;
        Ok(Self { cost, permits: Arc::new(Semaphore::new(workers)), dummy: dummy.into() })
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)
    }

    pub async fn hash(&self, password: &SecretString) -> Result<String, ApiError> {
        let input = prehash(password.expose_secret());
        let cost = self.cost;
        self.run(move || bcrypt::hash(input, cost)).await?.map_err(ApiError::internal)
    }

    /// Whether `password` matches `hash`; with no hash (unknown account) it still does
    /// the same work and answers `false`.
    pub async fn verify(&self, password: &SecretString, hash: Option<&str>) -> Result<bool, ApiError> {
        let input = prehash(password.expose_secret());
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let matches = self.run(move || bcrypt::verify(input, &hash).unwrap_or(false)).await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(secret: &str) -> Authenticator {
        Authenticator::new(&SecretString::from(secret.to_owned()), Duration::from_secs(60), Revocations::new(None, "t"))
    }

    #[tokio::test]
    async fn tokens_round_trip_and_revoke() {
        let auth = authenticator("s3cret-s3cret-s3cret-s3cret-s3cret");
        let issued = auth.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).unwrap();
        let claims = auth.verify(&issued.token).await.unwrap();
        assert_eq!(claims.sub, issued.claims.sub);
        assert_eq!(claims.role, Role::Admin);
        auth.revocations()
            .revoked(&[crate::revocations::Revoked {
                session_id: claims.sid,
                until: Utc::now() + chrono::Duration::minutes(1),
            }])
            .await;
        let err = auth.verify(&issued.token).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthorized);
    }

    #[tokio::test]
    async fn tokens_signed_with_another_key_or_alg_none_are_refused() {
        let ours = authenticator("key-one-key-one-key-one-key-one");
        let theirs = authenticator("key-two-key-two-key-two-key-two");
        let forged = theirs.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).unwrap();
        assert!(ours.verify(&forged.token).await.is_err());

        let payload = serde_json::to_vec(&forged.claims).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&payload));
        assert!(ours.verify(&unsigned).await.is_err());
    }

    #[tokio::test]
    async fn service_tokens_open_internal_routes_and_user_tokens_do_not() {
        let auth = authenticator("s3cret-s3cret-s3cret-s3cret-s3cret");
        let service = auth.service_token("order").unwrap();
        assert_eq!(auth.verify_service(&service).unwrap().sub, "order");
        let user = auth.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).unwrap();
        assert!(auth.verify_service(&user.token).is_err(), "a user token is not a service token");
        assert!(auth.verify(&service).await.is_err(), "a service token is not a user token");
        let other = authenticator("another-key-another-key-another-key");
        assert!(other.verify_service(&service).is_err());
    }

    #[tokio::test]
    async fn passwords_verify_and_unknown_accounts_never_match() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let password = SecretString::from("correct horse battery staple".to_owned());
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hasher.verify(&password, Some(&hash)).await.unwrap());
        let wrong = SecretString::from("correct horse battery stapler".to_owned());
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&password, None).await.unwrap());
    }

    #[tokio::test]
    async fn long_passwords_count_past_bcrypts_72_bytes() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let a = SecretString::from(format!("{}a", "x".repeat(100)));
        let b = SecretString::from(format!("{}b", "x".repeat(100)));
        let hash = hasher.hash(&a).await.unwrap();
        assert!(!hasher.verify(&b, Some(&hash)).await.unwrap());
    }
}
