//! The user service's configuration: the common variables plus its own.

use std::num::NonZeroU32;
use std::time::Duration;

use common::config::{CommonConfig, ConfigError, Env};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Email, Password};

pub const DEFAULT_PORT: u16 = 8081;
/// The first admin in development; refused when `APP_ENV=production`.
pub const DEV_ADMIN_EMAIL: &str = "admin@shop.local";
pub const DEV_ADMIN_PASSWORD: &str = "admin-password-dev-only";
/// The lowest bcrypt cost accepted in production.
const MIN_PRODUCTION_BCRYPT_COST: u32 = 10;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub admin_email: Email,
    pub admin_password: Password,
    pub bcrypt_cost: u32,
    pub refresh_token_ttl: Duration,
    /// Login attempts allowed per minute per client address and email (`LOGIN_RATE_LIMIT`, 10).
    pub login_attempts_per_minute: NonZeroU32,
    /// Login attempts per minute per client address, whatever the email
    /// (`LOGIN_ADDRESS_RATE_LIMIT`, 100).
    pub login_attempts_per_address_per_minute: NonZeroU32,
    /// Registrations per minute per client address (`REGISTRATION_RATE_LIMIT`, 10).
    pub registrations_per_minute: NonZeroU32,
}

impl Config {
    /// The user service's variables on top of `common` (`Spec::configure`).
    pub(crate) fn with_common(common: CommonConfig, env: &Env) -> Result<Self, ConfigError> {
        let production = common.app_env.is_production();
        let admin_email = env.raw("ADMIN_EMAIL").unwrap_or(DEV_ADMIN_EMAIL).to_owned();
        let admin_password = env.secret("ADMIN_PASSWORD");
        if production {
            if admin_email == DEV_ADMIN_EMAIL {
                return Err(ConfigError::new(
                    "ADMIN_EMAIL",
                    "must be set (not the development value) when APP_ENV=production",
                ));
            }
            match &admin_password {
                Some(p) if p.expose_secret() != DEV_ADMIN_PASSWORD => {}
                _ => {
                    return Err(ConfigError::new(
                        "ADMIN_PASSWORD",
                        "must be set (not the development value) when APP_ENV=production",
                    ));
                }
            }
        }
        let admin_email = Email::parse(admin_email).map_err(|e| ConfigError::new("ADMIN_EMAIL", e))?;
        let admin_password = Password::parse(admin_password.unwrap_or_else(|| SecretString::from(DEV_ADMIN_PASSWORD)))
            .map_err(|e| ConfigError::new("ADMIN_PASSWORD", e))?;
        let bcrypt_cost = env.or("BCRYPT_COST", bcrypt::DEFAULT_COST)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(ConfigError::new("BCRYPT_COST", "must be between 4 and 31"));
        }
        if production && bcrypt_cost < MIN_PRODUCTION_BCRYPT_COST {
            return Err(ConfigError::new(
                "BCRYPT_COST",
                format!("must be at least {MIN_PRODUCTION_BCRYPT_COST} when APP_ENV=production"),
            ));
        }
        Ok(Self {
            common,
            admin_email,
            admin_password,
            bcrypt_cost,
            refresh_token_ttl: env.duration("REFRESH_TOKEN_TTL", Duration::from_secs(30 * 24 * 3600))?,
            login_attempts_per_minute: env.or("LOGIN_RATE_LIMIT", NonZeroU32::new(10).expect("10 > 0"))?,
            login_attempts_per_address_per_minute: env
                .or("LOGIN_ADDRESS_RATE_LIMIT", NonZeroU32::new(100).expect("100 > 0"))?,
            registrations_per_minute: env.or("REGISTRATION_RATE_LIMIT", NonZeroU32::new(10).expect("10 > 0"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::service::Spec as _;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    const PROD_SECRET: (&str, &str) = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn development_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.common.port, DEFAULT_PORT);
        assert_eq!(c.admin_email.as_str(), DEV_ADMIN_EMAIL);
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.login_attempts_per_minute.get(), 10);
    }

    #[test]
    fn production_refuses_development_admin_and_weak_hashing() {
        let prod = ("APP_ENV", "production");
        let db = ("DATABASE_URL", "postgres://users_svc:pw@db/shop");
        let email = ("ADMIN_EMAIL", "ops@example.com");
        let password = ("ADMIN_PASSWORD", "a-long-production-password");
        assert_eq!(config(&[prod, db, PROD_SECRET, password]).unwrap_err().name, "ADMIN_EMAIL");
        assert_eq!(config(&[prod, db, PROD_SECRET, email]).unwrap_err().name, "ADMIN_PASSWORD");
        let dev_password = ("ADMIN_PASSWORD", DEV_ADMIN_PASSWORD);
        assert_eq!(config(&[prod, db, PROD_SECRET, email, dev_password]).unwrap_err().name, "ADMIN_PASSWORD");
        let weak = ("BCRYPT_COST", "4");
        assert_eq!(config(&[prod, db, PROD_SECRET, email, password, weak]).unwrap_err().name, "BCRYPT_COST");
        assert!(config(&[prod, db, PROD_SECRET, email, password]).is_ok());
    }

    #[test]
    fn malformed_values_name_their_variable() {
        assert_eq!(config(&[("BCRYPT_COST", "99")]).unwrap_err().name, "BCRYPT_COST");
        assert_eq!(config(&[("LOGIN_RATE_LIMIT", "0")]).unwrap_err().name, "LOGIN_RATE_LIMIT");
        assert_eq!(config(&[("ADMIN_EMAIL", "not-an-email")]).unwrap_err().name, "ADMIN_EMAIL");
        assert_eq!(config(&[("ADMIN_PASSWORD", "short")]).unwrap_err().name, "ADMIN_PASSWORD");
        assert_eq!(config(&[("REFRESH_TOKEN_TTL", "forever")]).unwrap_err().name, "REFRESH_TOKEN_TTL");
    }
}
