//! Accounts, the business steps behind `/api/auth/register` and `/api/users/*`:
//! registering, profiles read through both cache levels, and profile changes (a new
//! password ends the other sessions).

use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::auth::AuthUser;
use common::contracts::EventType;
use common::events;
use secrecy::SecretString;
use uuid::Uuid;

use crate::domain::{NewUser, ProfileChanges, Role, User};
use crate::error::Error;
use crate::steps::sessions::revoke_sessions;
use crate::{AppState, PROFILE_TTL, repository};

/// Adds a customer account (`user.registered`, data: the `User`).
pub async fn register(state: &AppState, new_user: &NewUser) -> Result<User, ApiError> {
    let hash = state.passwords.hash(new_user.password.secret()).await?;
    let mut tx = state.db.begin().await?;
    let user = repository::insert_user(&mut *tx, new_user, &hash, Role::Customer).await?;
    events::emit_event(&mut tx, EventType::UserRegistered, user.id, &user).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "registered");
    Ok(user)
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
pub async fn profile(state: &AppState, id: Uuid) -> Result<Response, ApiError> {
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

/// Checks the caller's current password before a profile change: `invalid_credentials`
/// when it is wrong.
pub async fn confirm_password(state: &AppState, id: Uuid, password: &SecretString) -> Result<(), ApiError> {
    let hash = repository::password_hash(&state.db, id).await?.ok_or(Error::NotFound)?;
    if state.passwords.verify(password, Some(&hash)).await? { Ok(()) } else { Err(Error::InvalidCredentials.into()) }
}

/// Applies `changes` to the caller's profile (its current password checked already): the
/// new profile, which the writer reads at once and other replicas within
/// `CACHE_STALE_MAX`.
pub async fn update_profile(state: &AppState, user: &AuthUser, changes: &ProfileChanges) -> Result<User, ApiError> {
    let new_hash = match &changes.password {
        Some(password) => Some(state.passwords.hash(password.secret()).await?),
        None => None,
    };
    let mut tx = state.db.begin().await?;
    let (updated, version) = repository::update_profile(&mut *tx, user.id, changes, new_hash.as_deref()).await?;
    let mut revoked = Vec::new();
    if new_hash.is_some() {
        let others = repository::revoke_other_families(&mut *tx, user.id, user.claims.sid).await?;
        revoked = revoke_sessions(state, &mut tx, others).await?;
    }
    tx.commit().await?;
    state.auth().revocations().revoked(&revoked).await;
    // Never over a later update's value, whichever of two concurrent updates lands last.
    let key = profile_key(user.id);
    state.cache.put_versioned(&key, version.timestamp_micros(), &updated, PROFILE_TTL).await;
    state.cache.invalidate(&[key], &[]).await;
    Ok(updated)
}
