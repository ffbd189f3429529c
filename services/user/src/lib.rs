//! The user service: accounts, login, access and refresh tokens, profiles.
//!
//! - [`domain`]: what a valid username, email and password are; refresh-token verdicts;
//! - [`repository`]: the SQL of the `users` schema;
//! - [`http`]: the handlers of `/api/auth/*` and `/api/users/*` and their OpenAPI;
//! - [`steps`]: the business steps the handlers call: sessions (logging in, refreshing,
//!   logging out) and accounts (registering, profiles through the cache, changes);
//! - [`config`]: the variables this service reads;
//! - [`error`]: its failures and their API codes.
//!
//! Its [`Config`] is its skeleton (`common::service::Spec`): as it starts, the first admin
//! is made sure of and the revoked sessions are served from its database.

pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod repository;
pub mod steps;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use common::auth::PasswordHasher;
use common::cache::Cache;
use common::config::{CommonConfig, ConfigError, Env};
use common::db::Schema;
use common::http::Shared;
use common::ratelimit::Limiter;
use common::service::Identity;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

pub use config::Config;
use domain::{NewUser, Role, Username};
use error::Error;

/// The schema and role this service owns.
pub const SCHEMA: Schema = Schema { name: "users", role: "users_svc" };

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/users");

/// The service's name, as its consumer group and in metrics.
pub const SERVICE: &str = "user";

/// How long a profile stays cached (API: five minutes, invalidated on change).
pub const PROFILE_TTL: Duration = Duration::from_secs(300);

/// Everything a handler needs; cheap to clone.
pub type AppState = common::http::AppState<Inner>;

pub struct Inner {
    /// The pool of the `users` schema.
    pub db: PgPool,
    /// bcrypt, off the async workers.
    pub passwords: PasswordHasher,
    /// Profiles by id, five minutes.
    pub cache: Cache,
    /// Login attempts per client address and email.
    pub login_limiter: Limiter,
    /// Login attempts per client address, whatever the email.
    pub login_address_limiter: Limiter,
    /// Registrations per client address.
    pub registration_limiter: Limiter,
    /// Wrong `current_password` guesses on a profile update, per user.
    pub password_check_limiter: Limiter,
    pub refresh_token_ttl: Duration,
}

/// The user service's skeleton: its state and routes; the first admin is created and the
/// revoked sessions are served from its database as it starts.
impl common::service::Spec for Config {
    const ID: Identity = Identity::new(SERVICE, "user-service", SCHEMA, &MIGRATOR, config::DEFAULT_PORT);
    type State = AppState;

    fn configure(common: CommonConfig, env: &Env) -> Result<Self, ConfigError> {
        Self::with_common(common, env)
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    /// The state, once the first admin is made sure of.
    async fn state(&self, shared: &Shared, db: PgPool) -> anyhow::Result<AppState> {
        let per_minute = self.login_attempts_per_minute;
        let minute = Duration::from_secs(60);
        let state = common::http::AppState::new(
            shared.auth.clone(),
            Inner {
                db,
                passwords: PasswordHasher::new(self.bcrypt_cost).await?,
                cache: shared.cache.clone(),
                login_limiter: shared.limiter("login", per_minute, minute),
                login_address_limiter: shared.limiter(
                    "login-address",
                    self.login_attempts_per_address_per_minute,
                    minute,
                ),
                registration_limiter: shared.limiter("registration", self.registrations_per_minute, minute),
                password_check_limiter: shared.limiter("password-check", per_minute, minute),
                refresh_token_ttl: self.refresh_token_ttl,
            },
        );
        ensure_admin(&state, self).await?;
        Ok(state)
    }
    fn routes() -> OpenApiRouter<AppState> {
        http::routes()
    }
    async fn workers(&self, shared: &Shared, _: &AppState, db: &PgPool) -> anyhow::Result<()> {
        shared.auth.revocations().serve_from(Arc::new(RevocationRecord(db.clone()))).await;
        Ok(())
    }
}

/// The durable record of revoked sessions, read straight from this service's database.
struct RevocationRecord(PgPool);

impl common::revocations::Source for RevocationRecord {
    fn load(&self) -> futures::future::BoxFuture<'_, anyhow::Result<Vec<common::revocations::Revoked>>> {
        Box::pin(async move { Ok(repository::revoked_sessions(&self.0).await?) })
    }
}

/// Creates the admin of `ADMIN_EMAIL` if no account has that email. An existing account
/// is left alone, password and role included: configuration names the *first* admin,
/// and promoting whoever registered that address first would be a privilege escalation.
async fn ensure_admin(state: &AppState, config: &Config) -> anyhow::Result<()> {
    if let Some((user, _)) = repository::find_credentials(&state.db, config.admin_email.as_str()).await? {
        if user.role != Role::Admin {
            tracing::warn!(user_id = %user.id, "ADMIN_EMAIL belongs to a customer account; it was not promoted");
        }
        return Ok(());
    }
    let hash = state.passwords.hash(config.admin_password.secret()).await?;
    for username in ["admin".to_owned(), format!("admin-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])] {
        let admin = NewUser {
            username: Username::parse(username).map_err(anyhow::Error::msg)?,
            email: config.admin_email.clone(),
            password: config.admin_password.clone(),
        };
        match repository::insert_user(&state.db, &admin, &hash, Role::Admin).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "created the first admin");
                return Ok(());
            }
            // Another replica created it at the same moment.
            Err(Error::EmailTaken) => return Ok(()),
            Err(Error::UsernameTaken) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not find a free username for the first admin")
}
