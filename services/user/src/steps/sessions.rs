//! Sessions, the business steps behind `/api/auth/login`, `/refresh` and `/logout`: a
//! session is a refresh-token family; each refresh retires the token it was given, a
//! token presented twice revokes its whole session, and a revoked session's access tokens
//! are refused by every service until they expire.

use chrono::Utc;
use common::ApiError;
use common::auth::AuthUser;
use common::revocations::Revoked;
use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{RefreshVerdict, User};
use crate::error::Error;
use crate::{AppState, repository, tokens};

/// A login session: a short-lived access token and the refresh token that renews it.
#[derive(Serialize, ToSchema)]
pub struct Tokens {
    /// A JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Opaque; each use returns a new one and retires this one.
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
    pub user: User,
}

/// Logs in: checks `password` against the account of `email` (an unknown email costs a
/// password check too, so the answer takes as long) and opens a session.
pub async fn log_in(state: &AppState, email: &str, password: &SecretString) -> Result<Tokens, ApiError> {
    let found = repository::find_credentials(&state.db, email).await?;
    let hash = found.as_ref().map(|(_, hash)| hash.as_str());
    let verified = state.passwords.verify(password, hash).await?;
    match found {
        Some((user, _)) if verified => open(state, user).await,
        _ => Err(Error::InvalidCredentials.into()),
    }
}

/// Starts a session (a refresh-token family) for `user` and issues its first tokens.
async fn open(state: &AppState, user: User) -> Result<Tokens, ApiError> {
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

/// Exchanges `refresh_token` for new tokens of the same session.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<Tokens, ApiError> {
    let digest = tokens::digest(refresh_token);
    let mut tx = state.db.begin().await?;
    let stored =
        repository::lock_refresh_token(&mut tx, &digest).await?.ok_or(Error::RefreshToken("not recognised"))?;
    match stored.judge(Utc::now()) {
        RefreshVerdict::Rotate => {}
        RefreshVerdict::Reused => {
            repository::revoke_family(&mut *tx, stored.family_id, stored.user_id).await?;
            let revoked = revoke_sessions(state, &mut tx, vec![stored.family_id]).await?;
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
    let tokens = tokens_for(state, user, stored.family_id, next.clone())?;
    repository::mark_rotated(&mut *tx, stored.id).await?;
    let expires_at = Utc::now() + state.refresh_token_ttl;
    repository::insert_refresh_token(&mut *tx, stored.family_id, stored.user_id, &tokens::digest(&next), expires_at)
        .await?;
    tx.commit().await?;
    Ok(tokens)
}

/// Ends the caller's session and the one `refresh_token` belongs to (if it is the
/// caller's): their access and refresh tokens stop working at once.
pub async fn logout(state: &AppState, user: &AuthUser, refresh_token: &str) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    let other = repository::revoke_family_of(&mut *tx, &tokens::digest(refresh_token), user.id).await?;
    repository::revoke_family(&mut *tx, user.claims.sid, user.id).await?;
    let sessions = std::iter::once(user.claims.sid).chain(other.filter(|&family| family != user.claims.sid));
    let revoked = revoke_sessions(state, &mut tx, sessions.collect()).await?;
    tx.commit().await?;
    state.auth().revocations().revoked(&revoked).await;
    Ok(())
}

/// Records in `tx` that the access tokens of `sessions` are refused until the last of them
/// has expired; what to hand to [`common::revocations::Revocations::revoked`] once committed.
pub(crate) async fn revoke_sessions(
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
