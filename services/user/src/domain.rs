//! The user service's rules, free of SQL and HTTP: what a valid username, email and
//! password are, and how a presented refresh token is judged.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use common::auth::Role;

/// 3–50 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if (3..=50).contains(&raw.len()) && raw.chars().all(allowed) {
            Ok(Self(raw))
        } else {
            Err("must be 3 to 50 characters of letters, digits, '_', '.' or '-'")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A syntactically valid address, at most 254 characters. Kept as the user typed it;
/// compared case-insensitively (the database's unique index is on `lower(email)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        use validator::ValidateEmail;
        if raw.len() <= 254 && raw.validate_email() { Ok(Self(raw)) } else { Err("must be a valid email address") }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 8–128 characters. Never printed.
#[derive(Clone)]
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: SecretString) -> Result<Self, &'static str> {
        let chars = raw.expose_secret().chars().count();
        if (8..=128).contains(&chars) { Ok(Self(raw)) } else { Err("must be 8 to 128 characters") }
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A registration that passed every rule.
#[derive(Debug)]
pub struct NewUser {
    pub username: Username,
    pub email: Email,
    pub password: Password,
}

/// What a profile update changes; `None` leaves the field as it is.
#[derive(Debug, Default)]
pub struct ProfileChanges {
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub password: Option<Password>,
}

/// A user as clients see it: never with a password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// A refresh token as stored, when it is presented again.
#[derive(Debug, Clone)]
pub struct StoredRefreshToken {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What presenting a refresh token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Rotate it: the old one stops working, a new one of the same family is issued.
    Rotate,
    /// It was already rotated: someone replayed an old token, so the whole family is
    /// revoked (the thief and the owner both have to log in again).
    Reused,
    Revoked,
    Expired,
}

impl StoredRefreshToken {
    pub fn judge(&self, now: DateTime<Utc>) -> RefreshVerdict {
        if self.revoked_at.is_some() {
            RefreshVerdict::Revoked
        } else if self.rotated_at.is_some() {
            RefreshVerdict::Reused
        } else if self.expires_at <= now {
            RefreshVerdict::Expired
        } else {
            RefreshVerdict::Rotate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn usernames() {
        for ok in ["abc", "jane.doe-99_x", &"a".repeat(50)] {
            assert!(Username::parse(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in ["ab", &"a".repeat(51), "jane doe", "jané", "<script>", "robert'); DROP TABLE"] {
            assert!(Username::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(Email::parse("Jane.Doe+shop@Example.com".to_owned()).is_ok());
        for bad in
            ["", "jane", "jane@", "@example.com", "jane doe@example.com", &format!("{}@example.com", "a".repeat(250))]
        {
            assert!(Email::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_count_characters_not_bytes_and_never_print() {
        let secret = |s: &str| SecretString::from(s.to_owned());
        assert!(Password::parse(secret("1234567")).is_err());
        assert!(Password::parse(secret("12345678")).is_ok());
        assert!(Password::parse(secret(&"é".repeat(128))).is_ok());
        assert!(Password::parse(secret(&"a".repeat(129))).is_err());
        let p = Password::parse(secret("hunter2hunter2")).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn refresh_token_verdicts() {
        let now = Utc::now();
        let token = StoredRefreshToken {
            id: Uuid::now_v7(),
            family_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            role: Role::Customer,
            expires_at: now + Duration::days(1),
            rotated_at: None,
            revoked_at: None,
        };
        assert_eq!(token.judge(now), RefreshVerdict::Rotate);
        let rotated = StoredRefreshToken { rotated_at: Some(now), ..token.clone() };
        assert_eq!(rotated.judge(now), RefreshVerdict::Reused);
        let revoked = StoredRefreshToken { revoked_at: Some(now), ..rotated.clone() };
        assert_eq!(revoked.judge(now), RefreshVerdict::Revoked);
        let expired = StoredRefreshToken { expires_at: now - Duration::seconds(1), ..token };
        assert_eq!(expired.judge(now), RefreshVerdict::Expired);
    }
}
