//! Rate limits with the `RateLimit-*` and `Retry-After` headers of API.md.
//!
//! With Redis, a limit is a fixed window counted by one atomic script, so every replica
//! spends from one shared budget. Without Redis (`shop` only) governor's in-process GCRA
//! keeps the same limit for the one process there is. If Redis cannot be reached the
//! request is let through: an outage of the limiter must not become an outage of login.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use redis::aio::ConnectionManager;

use crate::cache::REDIS_TIMEOUT;
use crate::error::{ApiError, ErrorCode};

type LocalLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// How many keys the in-process limiter tracks before it forgets idle ones.
const LOCAL_KEYS_BEFORE_CLEANUP: usize = 10_000;

/// INCR the window's counter, start the window on the first hit, report count and time left.
const FIXED_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

#[derive(Clone)]
enum Backend {
    Redis { conn: ConnectionManager, script: Arc<redis::Script>, prefix: Arc<str> },
    Local(Arc<LocalLimiter>),
}

/// One named limit (`login`: 10 a minute), checked per key (client address and email).
#[derive(Clone)]
pub struct Limiter {
    name: &'static str,
    limit: NonZeroU32,
    window: Duration,
    backend: Backend,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("name", &self.name).field("limit", &self.limit).finish()
    }
}

/// The outcome of one check, with what the client is told in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the budget is whole again (rounded up).
    pub reset_secs: u64,
}

impl Decision {
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut put = |name: HeaderName, value: u64| {
            headers.insert(name, HeaderValue::from(value));
        };
        put(HeaderName::from_static("ratelimit-limit"), u64::from(self.limit));
        put(HeaderName::from_static("ratelimit-remaining"), u64::from(self.remaining));
        put(HeaderName::from_static("ratelimit-reset"), self.reset_secs);
        if !self.allowed {
            put(header::RETRY_AFTER, self.reset_secs.max(1));
        }
        headers
    }

    /// Of two limits a request spends from (per address, and per address and email), the
    /// one the client must be told about: a refusal, or else the one with less left.
    pub fn tighter(self, other: Self) -> Self {
        match (self.allowed, other.allowed) {
            (true, false) => other,
            (false, true) => self,
            (false, false) if other.reset_secs > self.reset_secs => other,
            (true, true) if other.remaining < self.remaining => other,
            _ => self,
        }
    }

    /// `result` carrying this decision's headers, whichever way it went.
    pub fn attach<T: IntoResponse>(&self, result: Result<T, ApiError>) -> Result<Response, ApiError> {
        match result {
            Ok(answer) => Ok((self.headers(), answer).into_response()),
            Err(err) => Err(err.with_headers(self.headers())),
        }
    }

    /// `Ok` when allowed, the 429 with its headers otherwise.
    pub fn enforce(self) -> Result<Self, ApiError> {
        if self.allowed {
            return Ok(self);
        }
        Err(ApiError::new(ErrorCode::RateLimited)
            .with_detail(format!("too many requests; retry in {} s", self.reset_secs.max(1)))
            .with_headers(self.headers()))
    }
}

impl Limiter {
    /// `limit` requests per `window` per key; Redis-backed when a connection is given.
    pub fn new(
        name: &'static str,
        limit: NonZeroU32,
        window: Duration,
        redis: Option<ConnectionManager>,
        prefix: &str,
    ) -> Self {
        let backend = match redis {
            Some(conn) => {
                Backend::Redis { conn, script: Arc::new(redis::Script::new(FIXED_WINDOW)), prefix: prefix.into() }
            }
            None => {
                let period = window / limit.get();
                let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                    .expect("a non-zero period")
                    .allow_burst(limit);
                Backend::Local(Arc::new(RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()))
            }
        };
        Self { name, limit, window, backend }
    }

    /// Spends one unit of `key`'s budget.
    pub async fn check(&self, key: impl std::fmt::Display) -> Decision {
        let key = key.to_string();
        let limit = self.limit.get();
        match &self.backend {
            Backend::Local(limiter) => {
                if limiter.len() > LOCAL_KEYS_BEFORE_CLEANUP {
                    limiter.retain_recent();
                }
                match limiter.check_key(&key) {
                    Ok(snapshot) => {
                        let remaining = snapshot.remaining_burst_capacity();
                        let used = limit - remaining;
                        let refill = self.window.as_secs_f64() / f64::from(limit) * f64::from(used);
                        Decision { allowed: true, limit, remaining, reset_secs: refill.ceil() as u64 }
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        Decision { allowed: false, limit, remaining: 0, reset_secs: wait.as_secs_f64().ceil() as u64 }
                    }
                }
            }
            Backend::Redis { conn, script, prefix } => {
                let mut conn = conn.clone();
                let redis_key = format!("{prefix}:ratelimit:{}:{key}", self.name);
                let mut invocation = script.key(redis_key);
                invocation.arg(self.window.as_millis() as u64);
                let call = invocation.invoke_async::<(u64, i64)>(&mut conn);
                match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                    Ok(Ok((count, ttl_ms))) => {
                        let reset_secs = (ttl_ms.max(0) as u64).div_ceil(1000);
                        Decision {
                            allowed: count <= u64::from(limit),
                            limit,
                            remaining: u64::from(limit).saturating_sub(count) as u32,
                            reset_secs,
                        }
                    }
                    outcome => {
                        let error = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        metrics::counter!("ratelimit_errors_total", "limit" => self.name).increment(1);
                        tracing::warn!(limit = self.name, error, "rate limiter unavailable; allowing the request");
                        Decision { allowed: true, limit, remaining: limit, reset_secs: self.window.as_secs() }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limiter_allows_the_budget_then_refuses_with_retry_after() {
        let limiter = Limiter::new("t", NonZeroU32::new(3).unwrap(), Duration::from_secs(60), None, "p");
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let d = limiter.check("a").await;
            assert!(d.allowed);
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check("a").await;
        assert!(!refused.allowed);
        assert!((1..=20).contains(&refused.reset_secs), "{refused:?}");
        let err = refused.enforce().unwrap_err();
        assert_eq!(err.code(), ErrorCode::RateLimited);
        assert!(refused.headers().contains_key(header::RETRY_AFTER));
        // Another key has its own budget.
        assert!(limiter.check("b").await.allowed);
    }

    #[test]
    fn the_tighter_of_two_limits_is_the_refusal_or_the_one_with_less_left() {
        let allowed = |remaining| Decision { allowed: true, limit: 10, remaining, reset_secs: 60 };
        let refused = |reset_secs| Decision { allowed: false, limit: 10, remaining: 0, reset_secs };
        assert_eq!(allowed(5).tighter(allowed(2)), allowed(2));
        assert_eq!(allowed(2).tighter(allowed(5)), allowed(2));
        assert_eq!(allowed(0).tighter(refused(9)), refused(9));
        assert_eq!(refused(9).tighter(allowed(0)), refused(9));
        assert_eq!(refused(3).tighter(refused(9)), refused(9));
    }
}
