//! The handlers of `/api/auth/*` and `/api/users/*`: parse the request into domain types,
//! apply the rules, map the outcome. Each carries its OpenAPI description.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use common::auth::{AdminUser, AuthUser, ServiceCaller};
use common::contracts::EventType;
use common::error::Problem;
use common::events;
use common::extract::{Body, ClientAddr, Json, Path, rule_errors_of};
use common::revocations::{Revoked, RevokedList};
use common::{ApiError, FieldErrors};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{Email, NewUser, Password, ProfileChanges, RefreshVerdict, Role, User, Username};
use crate::error::Error;
use crate::{AppState, PROFILE_TTL, repository, tokens};

/// The routes of this service, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, update_me))
        .routes(routes!(get_user))
        .routes(routes!(revocations))
}

// The schemas below say what `Username`, `Email` and `Password` accept (domain.rs), so that
// every request the document allows passes them. Strings never hold NUL (`\u0000`: the
// JSON extractor refuses it), hence `[^\u0000]` where nothing narrower applies.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–50 characters of letters, digits, `_`, `.` and `-`; unique whatever its case.
    #[schema(example = "jane_doe", min_length = 3, max_length = 50, pattern = r"^[A-Za-z0-9_.-]{3,50}$")]
    username: String,
    /// At most 254 characters; unique, compared case-insensitively.
    #[schema(example = "jane@example.com", format = Email, max_length = 254)]
    email: String,
    /// 8–128 characters.
    #[schema(
        value_type = String, format = Password, example = "correct horse battery",
        min_length = 8, max_length = 128, pattern = r"^[^\u0000]{8,128}$"
    )]
    password: SecretString,
}

impl RegisterRequest {
    /// The account to create, or every field that breaks a rule.
    fn parse(self) -> Result<NewUser, ApiError> {
        let mut errors = FieldErrors::default();
        let username = errors.check("username", Username::parse(self.username));
        let email = errors.check("email", Email::parse(self.email));
        let password = errors.check("password", Password::parse(self.password));
        match (username, email, password) {
            (Some(username), Some(email), Some(password)) => Ok(NewUser { username, email, password }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

impl Body for RegisterRequest {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// Any strings: an unknown email or a wrong password is `401 invalid_credentials`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "jane@example.com", pattern = r"^[^\u0000]*$")]
    email: String,
    #[schema(value_type = String, format = Password, pattern = r"^[^\u0000]*$")]
    password: SecretString,
}

impl Body for LoginRequest {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// As issued; an unknown one is `401`.
    #[schema(value_type = String, pattern = r"^[^\u0000]*$")]
    refresh_token: SecretString,
}

impl Body for RefreshRequest {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// As issued.
    #[schema(value_type = String, pattern = r"^[^\u0000]*$")]
    refresh_token: SecretString,
}

impl Body for LogoutRequest {}

/// Any of `username`, `email`, `password`; `current_password` is always required.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// 3–50 characters of letters, digits, `_`, `.` and `-`; unique whatever its case.
    #[schema(min_length = 3, max_length = 50, pattern = r"^[A-Za-z0-9_.-]{3,50}$")]
    username: Option<String>,
    /// At most 254 characters; unique, compared case-insensitively.
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    /// 8–128 characters.
    #[schema(
        value_type = Option<String>, format = Password,
        min_length = 8, max_length = 128, pattern = r"^[^\u0000]{8,128}$"
    )]
    password: Option<SecretString>,
    /// A wrong one is `401 invalid_credentials`.
    #[schema(value_type = String, format = Password, pattern = r"^[^\u0000]*$")]
    current_password: SecretString,
}

impl UpdateProfileRequest {
    /// The changes asked for and the current password, or every field that breaks a rule.
    fn parse(self) -> Result<(ProfileChanges, SecretString), ApiError> {
        let mut errors = FieldErrors::default();
        let changes = ProfileChanges {
            username: self.username.and_then(|u| errors.check("username", Username::parse(u))),
            email: self.email.and_then(|e| errors.check("email", Email::parse(e))),
            password: self.password.and_then(|p| errors.check("password", Password::parse(p))),
        };
        errors.into_result()?;
        Ok((changes, self.current_password))
    }
}

impl Body for UpdateProfileRequest {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// A login session: a short-lived access token and the refresh token that renews it.
#[derive(Serialize, ToSchema)]
pub struct Tokens {
    /// A JWT to send as `Authorization: Bearer …`.
    access_token: String,
    /// Opaque; each use returns a new one and retires this one.
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    expires_in: u64,
    user: User,
}

fn profile_key(id: Uuid) -> String {
    format!("user:{id}")
}

/// How long an unknown user id is remembered as unknown.
const MISSING_TTL: Duration = Duration::from_secs(15);

/// A profile's JSON through both cache levels: a miss is filled without ever overwriting
/// a fresher value a concurrent update just wrote, and an update invalidates it on every
/// replica (which may serve the old one for up to `CACHE_STALE_MAX`; the updating replica
/// never does).
async fn profile(state: &AppState, id: Uuid) -> Result<Response, ApiError> {
    let db = state.db.clone();
    let ttl = |user: &Option<User>| if user.is_some() { PROFILE_TTL } else { MISSING_TTL };
    let cached = state
        .cache
        .load_cached(&profile_key(id), ttl, move || async move { Ok(repository::find_by_id(&db, id).await?) })
        .await?;
    if cached.is_null() {
        return Err(Error::NotFound.into());
    }
    let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    Ok((content_type, cached.json.clone()).into_response())
}

/// Starts a session (a refresh-token family) for `user` and issues its first tokens.
async fn open_session(state: &AppState, user: User) -> Result<Tokens, ApiError> {
    let family_id = Uuid::now_v7();
    let refresh_token = tokens::generate();
    let expires_at = Utc::now() + state.refresh_token_ttl;
    repository::insert_refresh_token(&state.db, family_id, user.id, &tokens::digest(&refresh_token), expires_at)
        .await?;
    tokens_for(state, user, family_id, refresh_token)
}

fn tokens_for(state: &AppState, user: User, family_id: Uuid, refresh_token: String) -> Result<Tokens, ApiError> {
    let access = state.auth().issue(user.id, user.role, family_id)?;
    Ok(Tokens { access_token: access.token, refresh_token, token_type: "Bearer", expires_in: access.expires_in, user })
}

/// Register a customer account. Emits `user.registered` (data: the `User`).
///
/// Limited to 10 a minute per client address (`REGISTRATION_RATE_LIMIT`); every answer
/// carries the `RateLimit-*` headers.
#[utoipa::path(
    post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = User),
        (status = 400, description = "Malformed JSON, or not an object", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken` or `username_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let limit = state.registration_limiter.check(addr).await.enforce()?;
    limit.attach(register_user(&state, req).await)
}

async fn register_user(state: &AppState, req: RegisterRequest) -> Result<impl IntoResponse + use<>, ApiError> {
    let new_user = req.parse()?;
    let hash = state.passwords.hash(new_user.password.secret()).await?;
    let mut tx = state.db.begin().await?;
    let user = repository::insert_user(&mut *tx, &new_user, &hash, Role::Customer).await?;
    events::emit_event(&mut tx, EventType::UserRegistered, user.id, &user).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "registered");
    Ok((StatusCode::CREATED, Json(user)))
}

/// Log in with email and password.
///
/// Limited to 10 attempts a minute per client address and email (`LOGIN_RATE_LIMIT`) and
/// 100 per client address whatever the email (`LOGIN_ADDRESS_RATE_LIMIT`); every answer
/// carries the `RateLimit-*` headers of the tighter of the two. An unknown email and a wrong password
/// give the same `401 invalid_credentials` in about the same time.
#[utoipa::path(
    post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = Tokens),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(req): Json<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (per_email, per_address) = tokio::join!(
        state.login_limiter.check(format!("{addr}|{}", req.email.to_lowercase())),
        state.login_address_limiter.check(addr),
    );
    let limit = per_email.tighter(per_address).enforce()?;
    let found = repository::find_credentials(&state.db, &req.email).await?;
    let hash = found.as_ref().map(|(_, hash)| hash.as_str());
    let verified = state.passwords.verify(&req.password, hash).await?;
    let user = match found {
        Some((user, _)) if verified => user,
        _ => {
            let err = ApiError::from(Error::InvalidCredentials);
            return Err(err.with_headers(limit.headers()));
        }
    };
    let tokens = open_session(&state, user).await?;
    Ok((limit.headers(), Json(tokens)))
}

/// Exchange a refresh token for new tokens.
///
/// The presented token stops working. Presenting a token that was already exchanged
/// revokes its whole session: whoever holds its successor must log in again.
#[utoipa::path(
    post, path = "/api/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = Tokens),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn refresh(State(state): State<AppState>, Json(req): Json<RefreshRequest>) -> Result<Json<Tokens>, ApiError> {
    use secrecy::ExposeSecret;
    let digest = tokens::digest(req.refresh_token.expose_secret());
    let mut tx = state.db.begin().await?;
    let stored =
        repository::lock_refresh_token(&mut tx, &digest).await?.ok_or(Error::RefreshToken("not recognised"))?;
    match stored.judge(Utc::now()) {
        RefreshVerdict::Rotate => {}
        RefreshVerdict::Reused => {
            repository::revoke_family(&mut *tx, stored.family_id, stored.user_id).await?;
            let revoked = revoke_sessions(&state, &mut tx, vec![stored.family_id]).await?;
            tx.commit().await?;
            state.auth().revocations().revoked(&revoked).await;
            tracing::warn!(user_id = %stored.user_id, "refresh token reused; session revoked");
            return Err(Error::RefreshToken("revoked").into());
        }
        RefreshVerdict::Revoked => return Err(Error::RefreshToken("revoked").into()),
        RefreshVerdict::Expired => return Err(Error::RefreshToken("expired").into()),
    }
    // Everything that can fail happens before the commit: once the old token is retired,
    // the client must get the new ones, or its retry would look like a replay.
    let next = tokens::generate();
    // Through the transaction's own connection: every other refresh of this token holds a
    // pooled connection while it waits for our row lock.
    let user = repository::find_by_id(&mut *tx, stored.user_id).await?.ok_or(Error::NotFound)?;
    let tokens = tokens_for(&state, user, stored.family_id, next.clone())?;
    repository::mark_rotated(&mut *tx, stored.id).await?;
    let expires_at = Utc::now() + state.refresh_token_ttl;
    repository::insert_refresh_token(&mut *tx, stored.family_id, stored.user_id, &tokens::digest(&next), expires_at)
        .await?;
    tx.commit().await?;
    Ok(Json(tokens))
}

/// Log out: the access token and the session's refresh token stop working at once.
#[utoipa::path(
    post, path = "/api/auth/logout", tag = "auth",
    request_body = LogoutRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The revocation could not be recorded; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<LogoutRequest>,
) -> Result<StatusCode, ApiError> {
    use secrecy::ExposeSecret;
    let mut tx = state.db.begin().await?;
    let other =
        repository::revoke_family_of(&mut *tx, &tokens::digest(req.refresh_token.expose_secret()), user.id).await?;
    repository::revoke_family(&mut *tx, user.claims.sid, user.id).await?;
    let sessions = std::iter::once(user.claims.sid).chain(other.filter(|&family| family != user.claims.sid));
    let revoked = revoke_sessions(&state, &mut tx, sessions.collect()).await?;
    tx.commit().await?;
    state.auth().revocations().revoked(&revoked).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Records in `tx` that the access tokens of `sessions` are refused until the last of them
/// has expired; what to hand to [`common::revocations::Revocations::revoked`] once committed.
async fn revoke_sessions(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sessions: Vec<Uuid>,
) -> Result<Vec<Revoked>, ApiError> {
    if sessions.is_empty() {
        return Ok(Vec::new());
    }
    let until = Utc::now() + state.auth().access_ttl() + chrono::Duration::seconds(1);
    repository::revoke_sessions(&mut **tx, &sessions, until).await?;
    Ok(sessions.into_iter().map(|session_id| Revoked { session_id, until }).collect())
}

/// The sessions every other service must refuse (services only).
#[utoipa::path(
    get, path = "/internal/revocations", tag = "internal",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every revoked session whose access tokens have not all expired yet", body = RevokedList),
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn revocations(State(state): State<AppState>, _caller: ServiceCaller) -> Result<Json<RevokedList>, ApiError> {
    Ok(Json(RevokedList { items: repository::revoked_sessions(&state.db).await? }))
}

/// The caller's profile.
#[utoipa::path(
    get, path = "/api/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    profile(&state, user.id).await
}

/// Change the caller's username, email or password.
///
/// `current_password` is required for every change; a wrong one is
/// `401 invalid_credentials`. Every update counts against a per-user limit of
/// `LOGIN_RATE_LIMIT` a minute, so the current password cannot be guessed faster than a
/// login could.
/// A new password ends the caller's other sessions; the current one stays logged in.
#[utoipa::path(
    patch, path = "/api/users/me", tag = "users",
    request_body = UpdateProfileRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = User),
        (status = 401, description = "Invalid access token, or `invalid_credentials` for a wrong current password", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken` or `username_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn update_me(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<UpdateProfileRequest>,
) -> Result<Json<User>, ApiError> {
    let (changes, current_password) = req.parse()?;

    let limit = state.password_check_limiter.check(user.id).await.enforce()?;
    let hash = repository::password_hash(&state.db, user.id).await?.ok_or(Error::NotFound)?;
    if !state.passwords.verify(&current_password, Some(&hash)).await? {
        let err = ApiError::from(Error::InvalidCredentials);
        return Err(err.with_headers(limit.headers()));
    }
    let new_hash = match &changes.password {
        Some(password) => Some(state.passwords.hash(password.secret()).await?),
        None => None,
    };

    let mut tx = state.db.begin().await?;
    let (updated, version) = repository::update_profile(&mut *tx, user.id, &changes, new_hash.as_deref()).await?;
    let mut revoked = Vec::new();
    if new_hash.is_some() {
        let others = repository::revoke_other_families(&mut *tx, user.id, user.claims.sid).await?;
        revoked = revoke_sessions(&state, &mut tx, others).await?;
    }
    tx.commit().await?;
    state.auth().revocations().revoked(&revoked).await;
    // Never over a later update's value, whichever of two concurrent updates lands last.
    let key = profile_key(user.id);
    state.cache.put_versioned(&key, version.timestamp_micros(), &updated, PROFILE_TTL).await;
    state.cache.invalidate(&[key], &[]).await;
    Ok(Json(updated))
}

/// Any user's profile (admins only).
#[utoipa::path(
    get, path = "/api/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, description = "No such user (or not a UUID)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
async fn get_user(State(state): State<AppState>, admin: AdminUser, Path(id): Path<Uuid>) -> Result<Response, ApiError> {
    profile(&state, id).await
}
