//! The handlers of `/api/auth/*` and `/api/users/*`: parse the request into domain types,
//! call the step ([`crate::steps::sessions`], [`crate::steps::accounts`]), map the outcome. Each carries
//! its OpenAPI description.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use common::auth::{AdminUser, AuthUser, ServiceCaller};
use common::error::Problem;
use common::extract::{Body, ClientAddr, Json, Parse, Path};
use common::http::RateLimited;
use common::revocations::RevokedList;
use common::{ApiError, FieldErrors};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{Email, NewUser, Password, ProfileChanges, User, Username};
use crate::steps::accounts;
use crate::steps::sessions::{self, Tokens};
use crate::{AppState, repository};

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

impl Parse for RegisterRequest {
    type Output = NewUser;

    /// The account to create, or every field that breaks a rule.
    fn parse(self) -> Result<Self::Output, ApiError> {
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

impl Parse for UpdateProfileRequest {
    type Output = (ProfileChanges, SecretString);

    /// The changes asked for and the current password, or every field that breaks a rule.
    fn parse(self) -> Result<Self::Output, ApiError> {
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

/// Register a customer account. Emits `user.registered` (data: the `User`).
///
/// Limited to 10 a minute per client address (`REGISTRATION_RATE_LIMIT`); every answer
/// carries the `RateLimit-*` headers.
#[utoipa::path(
    post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = User),
        (status = 409, description = "`email_taken` or `username_taken`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
#[tracing::instrument(skip_all)]
async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let limit = state.registration_limiter.check(addr).await.enforce()?;
    let registered = async { Ok((StatusCode::CREATED, Json(accounts::register(&state, &req.parse()?).await?))) };
    limit.attach(registered.await)
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
        RateLimited,
    )
)]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let (per_email, per_address) = tokio::join!(
        state.login_limiter.check(format!("{addr}|{}", req.email.to_lowercase())),
        state.login_address_limiter.check(addr),
    );
    let limit = per_email.tighter(per_address).enforce()?;
    limit.attach(sessions::log_in(&state, &req.email, &req.password).await.map(Json))
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
    )
)]
#[tracing::instrument(skip_all)]
async fn refresh(State(state): State<AppState>, Json(req): Json<RefreshRequest>) -> Result<Json<Tokens>, ApiError> {
    use secrecy::ExposeSecret;
    Ok(Json(sessions::refresh(&state, req.refresh_token.expose_secret()).await?))
}

/// Log out: the access token and the session's refresh token stop working at once.
#[utoipa::path(
    post, path = "/api/auth/logout", tag = "auth",
    request_body = LogoutRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
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
    sessions::logout(&state, &user, req.refresh_token.expose_secret()).await?;
    Ok(StatusCode::NO_CONTENT)
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
    accounts::profile(&state, user.id).await
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
    let confirmed = accounts::confirm_password(&state, user.id, &current_password).await;
    confirmed.map_err(|err| err.with_headers(limit.headers()))?;
    Ok(Json(accounts::update_profile(&state, &user, &changes).await?))
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
    accounts::profile(&state, id).await
}
