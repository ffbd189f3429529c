//! Configuration from the environment (12-factor), typed and validated at start-up.
//!
//! Every binary reads the same variable names (the table in ARCHITECTURE.md); a service
//! reads what it needs. A missing or malformed value is a [`ConfigError`] naming the
//! variable, and `APP_ENV=production` refuses the development defaults that would be
//! unsafe anywhere else.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// Signs development tokens only; refused when `APP_ENV=production`.
pub const DEV_JWT_SECRET: &str = "development-only-jwt-secret-never-use-in-production";

/// The shortest `JWT_SECRET` accepted in production: 256 bits, as HS256 wants.
const MIN_PRODUCTION_SECRET_LEN: usize = 32;

/// A configuration problem, always naming the variable so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self { name, message: message.into() }
    }
}

/// Where variables come from: the process environment, or a fixed set (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// A set value; an empty string counts as unset, as in most shells' `VAR= cmd`.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// A parsed value, `None` when unset.
    pub fn optional<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.raw(name)
            .map(|raw| raw.trim().parse().map_err(|e| ConfigError::new(name, format!("{e} (got {raw:?})"))))
            .transpose()
    }

    pub fn or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// A duration such as `15m`, `30s` or `7d`, longer than zero.
    pub fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let value = self.delay(name, default)?;
        if value.is_zero() {
            return Err(ConfigError::new(name, "must be longer than zero"));
        }
        Ok(value)
    }

    /// A duration that may be zero (`0s`: no wait).
    pub fn delay(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let Some(raw) = self.raw(name) else { return Ok(default) };
        humantime::parse_duration(raw.trim())
            .map_err(|e| ConfigError::new(name, format!("{e} (expected a duration like 15m or 30s, got {raw:?})")))
    }

    /// A size in bytes: a number with an optional unit (`64MiB`, `512KiB`, `1GiB`, `100MB`,
    /// `4096`).
    pub fn bytes(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        let Some(raw) = self.raw(name) else { return Ok(default) };
        let raw = raw.trim();
        let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let unit = match raw[digits..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1u64,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(ConfigError::new(name, format!("expected a size like 64MiB or 512KiB, got {raw:?}"))),
        };
        raw[..digits]
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(|| ConfigError::new(name, format!("expected a size like 64MiB or 512KiB, got {raw:?}")))
    }

    /// A secret: kept out of `Debug` output and logs.
    pub fn secret(&self, name: &'static str) -> Option<SecretString> {
        self.raw(name).map(|v| SecretString::from(v.to_owned()))
    }

    /// A boolean that is false unless set.
    pub fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.flag_or(name, false)
    }

    pub fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some(other) => Err(ConfigError::new(name, format!("expected true or false, got {other:?}"))),
        }
    }
}

/// `development` (the default) or `production`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

impl FromStr for AppEnv {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            _ => Err("expected development or production".into()),
        }
    }
}

impl AppEnv {
    pub fn is_production(self) -> bool {
        self == Self::Production
    }
}

/// What every binary needs, whichever services it runs.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub app_env: AppEnv,
    pub port: u16,
    pub database_url: SecretString,
    pub db_max_connections: u32,
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key this deployment writes, so that several deployments
    /// (or test runs) can share one Redis without seeing each other's data.
    pub redis_prefix: String,
    /// Kafka bootstrap servers; unset means in-process events (`shop` only).
    pub kafka_brokers: Option<String>,
    /// `KAFKA_GROUP_INSTANCE_ID`: this replica's static consumer-group identity, stable
    /// across its restarts (a StatefulSet pod name, say); unset means dynamic membership.
    pub kafka_group_instance_id: Option<String>,
    /// `KAFKA_BATCH_NUM_MESSAGES`: the most records the relays' producer puts in one
    /// batch. 1 by default, which every broker handles (see `common::events::kafka`);
    /// Apache Kafka deployments raise it.
    pub kafka_batch_records: u32,
    pub jwt_secret: SecretString,
    pub access_token_ttl: Duration,
    /// Take the client address from `X-Forwarded-For` (set by the gateway) instead of
    /// the TCP peer. Only safe behind a proxy that overwrites the header.
    pub trust_forwarded_for: bool,
    /// Apply the schema's migrations at start-up (`MIGRATE_ON_START`, default true), or
    /// wait until a migration job has brought the schema to this version.
    pub migrate_on_start: bool,
    /// How long `/ready` answers 503 after SIGTERM before the listener closes
    /// (`SHUTDOWN_DELAY`, default 0; Kubernetes sets it).
    pub shutdown_delay: Duration,
    /// OpenTelemetry on (the default) or off (`OTEL_SDK_DISABLED=true`, the
    /// specification's switch): off, requests make no spans and have no trace id.
    pub tracing: bool,
    /// Which traces are recorded when they are exported (`OTEL_TRACES_SAMPLER`,
    /// `OTEL_TRACES_SAMPLER_ARG`; parent-based, always on by default).
    pub trace_sampler: crate::telemetry::TraceSampler,
    /// The most a catalogue read on one replica may lag a write on another
    /// (`CACHE_STALE_MAX`, default 1 s): how long an in-process cache entry lives.
    pub cache_stale_max: Duration,
    /// The in-process cache's bound (`L1_CACHE_BYTES`, default 64 MiB; 0 turns it off).
    pub l1_cache_bytes: u64,
    /// The browser origins that may call the API (`CORS_ALLOWED_ORIGINS`, comma-separated,
    /// none by default): `https://shop.example`, `http://localhost:8000`.
    pub cors_allowed_origins: Vec<axum::http::HeaderValue>,
    /// Where a service outside the user service's process reads the revoked sessions
    /// (`USER_SERVICE_URL`, default `http://127.0.0.1:8081`; unused in `shop`).
    pub user_service_url: String,
    /// The longest a request may run (`REQUEST_TIMEOUT`, default 30 s): past it the request
    /// is ended (its future dropped, an open transaction rolled back) and answered
    /// `503 unavailable`, whether its client is still waiting or has gone.
    pub request_timeout: Duration,
    /// How long a consumer remembers an event it applied (`INBOX_RETENTION`, default 14
    /// days): longer than the broker keeps records (Kafka's default is 7 days), so that no
    /// record it could still redeliver finds its inbox row gone.
    pub inbox_retention: Duration,
}

/// librdkafka's bounds for `batch.num.messages`.
const KAFKA_BATCH_RECORDS: std::ops::RangeInclusive<u32> = 1..=1_000_000;

/// `REQUEST_TIMEOUT`'s default: above every bounded wait a request can make (three upstream
/// tries, three provider calls with their backoff), well inside Kubernetes' grace period.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `INBOX_RETENTION`'s default: twice Kafka's default retention (`log.retention.hours` =
/// 168, 7 days).
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/shop";

impl CommonConfig {
    pub fn from_env(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        let app_env: AppEnv = env.or("APP_ENV", AppEnv::Development)?;
        let jwt_secret = env.secret("JWT_SECRET");
        if app_env.is_production() {
            match &jwt_secret {
                None => return Err(ConfigError::new("JWT_SECRET", "must be set when APP_ENV=production")),
                Some(s) if s.expose_secret() == DEV_JWT_SECRET => {
                    return Err(ConfigError::new(
                        "JWT_SECRET",
                        "the development secret is refused when APP_ENV=production",
                    ));
                }
                Some(s) if s.expose_secret().len() < MIN_PRODUCTION_SECRET_LEN => {
                    return Err(ConfigError::new(
                        "JWT_SECRET",
                        format!("must be at least {MIN_PRODUCTION_SECRET_LEN} bytes when APP_ENV=production"),
                    ));
                }
                Some(_) => {}
            }
        }
        if app_env.is_production() && env.raw("DATABASE_URL").is_none() {
            // The default is a local superuser without a password.
            return Err(ConfigError::new("DATABASE_URL", "must be set when APP_ENV=production"));
        }
        let database_url = env.raw("DATABASE_URL").unwrap_or(DEFAULT_DATABASE_URL);
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            // Deliberately not echoing the value: it may hold a password.
            return Err(ConfigError::new("DATABASE_URL", "must be a postgres:// URL"));
        }
        let redis_url = env.secret("REDIS_URL");
        if let Some(url) = &redis_url
            && !(url.expose_secret().starts_with("redis://") || url.expose_secret().starts_with("rediss://"))
        {
            return Err(ConfigError::new("REDIS_URL", "must be a redis:// or rediss:// URL"));
        }
        let db_max_connections = env.or("DB_MAX_CONNECTIONS", 10u32)?;
        if db_max_connections == 0 {
            return Err(ConfigError::new("DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        let kafka_batch_records = env.or("KAFKA_BATCH_NUM_MESSAGES", crate::events::kafka::DEFAULT_BATCH_RECORDS)?;
        if !KAFKA_BATCH_RECORDS.contains(&kafka_batch_records) {
            return Err(ConfigError::new(
                "KAFKA_BATCH_NUM_MESSAGES",
                format!("must be from {} to {}", KAFKA_BATCH_RECORDS.start(), KAFKA_BATCH_RECORDS.end()),
            ));
        }
        Ok(Self {
            app_env,
            port: env.or("PORT", default_port)?,
            database_url: SecretString::from(database_url.to_owned()),
            db_max_connections,
            redis_url,
            redis_prefix: env.or("REDIS_PREFIX", "shop".to_owned())?,
            kafka_brokers: env.raw("KAFKA_BROKERS").map(|b| b.trim().to_owned()),
            kafka_group_instance_id: env.raw("KAFKA_GROUP_INSTANCE_ID").map(|b| b.trim().to_owned()),
            kafka_batch_records,
            jwt_secret: jwt_secret.unwrap_or_else(|| SecretString::from(DEV_JWT_SECRET)),
            access_token_ttl: env.duration("ACCESS_TOKEN_TTL", Duration::from_secs(15 * 60))?,
            trust_forwarded_for: env.flag("TRUST_FORWARDED_FOR")?,
            migrate_on_start: env.flag_or("MIGRATE_ON_START", true)?,
            shutdown_delay: env.delay("SHUTDOWN_DELAY", Duration::ZERO)?,
            tracing: !env.flag("OTEL_SDK_DISABLED")?,
            trace_sampler: crate::telemetry::TraceSampler::from_env(env)?,
            cache_stale_max: env.duration("CACHE_STALE_MAX", Duration::from_secs(1))?,
            l1_cache_bytes: env.bytes("L1_CACHE_BYTES", 64 << 20)?,
            cors_allowed_origins: origins(env.raw("CORS_ALLOWED_ORIGINS").unwrap_or_default())?,
            user_service_url: service_url(env, "USER_SERVICE_URL", "http://127.0.0.1:8081")?,
            request_timeout: env.duration("REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)?,
            inbox_retention: env.duration("INBOX_RETENTION", DEFAULT_INBOX_RETENTION)?,
        })
    }
}

/// A base URL of another service of ours.
pub fn service_url(env: &Env, name: &'static str, default: &str) -> Result<String, ConfigError> {
    let url = env.raw(name).unwrap_or(default).trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::new(name, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// `CORS_ALLOWED_ORIGINS`: origins as browsers send them (a scheme, a host and maybe a
/// port; no path), separated by commas.
fn origins(list: &str) -> Result<Vec<axum::http::HeaderValue>, ConfigError> {
    let invalid = |origin: &str| {
        ConfigError::new(
            "CORS_ALLOWED_ORIGINS",
            format!("{origin:?} is not an origin (scheme://host[:port], no path), as in https://shop.example"),
        )
    };
    list.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            match host {
                Some(host)
                    if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) =>
                {
                    axum::http::HeaderValue::from_str(origin).map_err(|_| invalid(origin))
                }
                _ => Err(invalid(origin)),
            }
        })
        .collect()
}

impl CommonConfig {
    /// A stand-alone service is one replica among many: its cache, limits and events must
    /// be shared, so Redis and Kafka are required (only `shop` may run without them).
    pub fn require_shared_infrastructure(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_none() {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must be set for a stand-alone service (only shop runs without it)",
            ));
        }
        if self.kafka_brokers.is_none() {
            return Err(ConfigError::new(
                "KAFKA_BROKERS",
                "must be set for a stand-alone service (only shop runs without it)",
            ));
        }
        Ok(())
    }
}

/// What a binary was asked to do: serve (no arguments), apply its migrations and exit
/// (`migrate`, what the Kubernetes migration Job runs), where the catalogue lives, fill it
/// (`seed --products N`), or put a topic's dead letters back on it (`dlq replay TOPIC`,
/// every binary: [`crate::events::kafka::replay_command`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
    Seed(usize),
    /// Republish the records of `<topic>.dlq` to the topics they came from.
    DlqReplay(String),
}

/// The lines every binary's usage ends with: the commands every binary has.
const SHARED_USAGE: &str = "  dlq replay TOPIC   republish the dead letters of TOPIC.dlq (KAFKA_BROKERS) to the topic\n                     each came from, commit, print how many, and exit\n\nConfigured by environment variables; see README.md.";

impl Command {
    /// Reads the command line (`seed` only if `can_seed`); prints `usage` and exits, with
    /// 0 when help was asked for and 2 on anything it does not know.
    pub fn from_args(usage: &str, can_seed: bool) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self::parse(&args, can_seed).unwrap_or_else(|help| {
            if help {
                println!("{usage}\n{SHARED_USAGE}");
                std::process::exit(0)
            }
            eprintln!("{usage}\n{SHARED_USAGE}");
            std::process::exit(2)
        })
    }

    /// The command `args` ask for, or whether help was asked for (`Err(true)`) or they make
    /// no sense (`Err(false)`).
    pub fn parse(args: &[String], can_seed: bool) -> Result<Self, bool> {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => Ok(Self::Serve),
            ["migrate"] => Ok(Self::Migrate),
            ["seed", "--products", n] if can_seed => n.parse().map(Self::Seed).map_err(|_| false),
            ["dlq", "replay", topic] if !topic.is_empty() && !topic.starts_with('-') => {
                Ok(Self::DlqReplay((*topic).to_owned()))
            }
            ["-h" | "--help" | "help"] => Err(true),
            _ => Err(false),
        }
    }
}

#[cfg(test)]
mod tests;
