//! SQL for the `users` schema, checked at compile time (`.sqlx/` holds the offline data).

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{Email, NewUser, ProfileChanges, Role, StoredRefreshToken, User, Username};
use crate::error::{Error, on_unique_violation};

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn insert_user(
    db: impl PgExecutor<'_>,
    user: &NewUser,
    password_hash: &str,
    role: Role,
) -> Result<User, Error> {
    sqlx::query_as!(
        User,
        r#"INSERT INTO users.users (id, username, email, password_hash, role)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, username, email, role AS "role: Role", created_at"#,
        Uuid::now_v7(),
        user.username.as_str(),
        user.email.as_str(),
        password_hash,
        role as Role,
    )
    .fetch_one(db)
    .await
    .map_err(on_unique_violation)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, Error> {
    Ok(sqlx::query_as!(
        User,
        r#"SELECT id, username, email, role AS "role: Role", created_at FROM users.users WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// The user with this email (any case) and their password hash.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_credentials(db: &PgPool, email: &str) -> Result<Option<(User, String)>, Error> {
    let row = sqlx::query!(
        r#"SELECT id, username, email, role AS "role: Role", created_at, password_hash
           FROM users.users WHERE lower(email) = lower($1)"#,
        email
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| {
        let user = User { id: r.id, username: r.username, email: r.email, role: r.role, created_at: r.created_at };
        (user, r.password_hash)
    }))
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn password_hash(db: &PgPool, id: Uuid) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar!("SELECT password_hash FROM users.users WHERE id = $1", id).fetch_optional(db).await?)
}

/// Returns the user and the row's new `updated_at` (a version for the cache).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn update_profile(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: &ProfileChanges,
    new_password_hash: Option<&str>,
) -> Result<(User, DateTime<Utc>), Error> {
    let row = sqlx::query!(
        r#"UPDATE users.users
           SET username = COALESCE($2, username),
               email = COALESCE($3, email),
               password_hash = COALESCE($4, password_hash),
               updated_at = clock_timestamp()
           WHERE id = $1
           RETURNING id, username, email, role AS "role: Role", created_at, updated_at"#,
        id,
        changes.username.as_ref().map(Username::as_str),
        changes.email.as_ref().map(Email::as_str),
        new_password_hash,
    )
    .fetch_optional(db)
    .await
    .map_err(on_unique_violation)?
    .ok_or(Error::NotFound)?;
    let user =
        User { id: row.id, username: row.username, email: row.email, role: row.role, created_at: row.created_at };
    Ok((user, row.updated_at))
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn insert_refresh_token(
    db: impl PgExecutor<'_>,
    family_id: Uuid,
    user_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query!(
        "INSERT INTO users.refresh_tokens (id, family_id, user_id, token_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        Uuid::now_v7(),
        family_id,
        user_id,
        token_hash,
        expires_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The presented token, locked until the transaction ends so that two refreshes with
/// the same token cannot both rotate it.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn lock_refresh_token(
    tx: &mut Transaction<'_, Postgres>,
    token_hash: &[u8],
) -> Result<Option<StoredRefreshToken>, Error> {
    Ok(sqlx::query_as!(
        StoredRefreshToken,
        r#"SELECT t.id, t.family_id, t.user_id, u.role AS "role: Role", t.expires_at, t.rotated_at, t.revoked_at
           FROM users.refresh_tokens t JOIN users.users u ON u.id = t.user_id
           WHERE t.token_hash = $1
           FOR UPDATE OF t"#,
        token_hash
    )
    .fetch_optional(&mut **tx)
    .await?)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn mark_rotated(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query!("UPDATE users.refresh_tokens SET rotated_at = now() WHERE id = $1", id).execute(db).await?;
    Ok(())
}

/// Revokes every live token of a family (a session): on logout and on replay.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn revoke_family(db: impl PgExecutor<'_>, family_id: Uuid, user_id: Uuid) -> Result<(), Error> {
    sqlx::query!(
        "UPDATE users.refresh_tokens SET revoked_at = now()
         WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL",
        family_id,
        user_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Revokes the family the given token belongs to, if the token is the user's; returns
/// that family (session), if there was one.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn revoke_family_of(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user_id: Uuid,
) -> Result<Option<Uuid>, Error> {
    let family = sqlx::query_scalar!(
        "WITH family AS (SELECT family_id FROM users.refresh_tokens WHERE token_hash = $1 AND user_id = $2),
              revoked AS (UPDATE users.refresh_tokens SET revoked_at = now()
                          WHERE user_id = $2 AND revoked_at IS NULL AND family_id = (SELECT family_id FROM family))
         SELECT family_id FROM family",
        token_hash,
        user_id
    )
    .fetch_optional(db)
    .await?;
    Ok(family)
}

/// Ends every session of the user but `keep` (after a password change); returns them.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn revoke_other_families(db: impl PgExecutor<'_>, user_id: Uuid, keep: Uuid) -> Result<Vec<Uuid>, Error> {
    let families = sqlx::query_scalar!(
        "UPDATE users.refresh_tokens SET revoked_at = now()
         WHERE user_id = $1 AND family_id <> $2 AND revoked_at IS NULL
         RETURNING family_id",
        user_id,
        keep
    )
    .fetch_all(db)
    .await?;
    let mut families = families;
    families.sort_unstable();
    families.dedup();
    Ok(families)
}

/// Records sessions whose access tokens every service must refuse until `until`.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn revoke_sessions(db: impl PgExecutor<'_>, sessions: &[Uuid], until: DateTime<Utc>) -> Result<(), Error> {
    sqlx::query!(
        "INSERT INTO users.revoked_sessions (session_id, until) SELECT unnest($1::uuid[]), $2
         ON CONFLICT (session_id) DO UPDATE SET until = greatest(revoked_sessions.until, EXCLUDED.until)",
        sessions,
        until
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Every session revoked and not yet expired, after pruning the expired ones.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn revoked_sessions(db: &PgPool) -> Result<Vec<common::revocations::Revoked>, Error> {
    Ok(sqlx::query_as!(
        common::revocations::Revoked,
        "WITH pruned AS (DELETE FROM users.revoked_sessions WHERE until <= now())
         SELECT session_id, until FROM users.revoked_sessions WHERE until > now()"
    )
    .fetch_all(db)
    .await?)
}
