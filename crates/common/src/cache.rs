//! Cache-aside storage: Redis when configured (shared by every replica), an in-process
//! moka cache otherwise (`shop` only).
//!
//! A cache that is down slows requests down; it never fails them. Every Redis error is
//! logged, counted and then treated as a miss (reads) or skipped (writes). TTLs get random
//! jitter so that entries written together do not all expire together.

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use rand::Rng;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a Redis call may take before the cache gives up and the request goes on
/// without it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The cap on in-process entries; moka evicts the least useful beyond it.
const LOCAL_CAPACITY: u64 = 100_000;

/// Connects to Redis with timeouts short enough that an outage costs each request at
/// most a fraction of a second.
pub async fn connect_redis(url: &secrecy::SecretString) -> anyhow::Result<ConnectionManager> {
    use secrecy::ExposeSecret;
    let client =
        redis::Client::open(url.expose_secret()).map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT * 4)
        .set_response_timeout(REDIS_TIMEOUT)
        .set_number_of_retries(1);
    let manager = ConnectionManager::new_with_config(client, config).await?;
    Ok(manager)
}

#[derive(Clone)]
enum Backend {
    Redis(ConnectionManager),
    Local(moka::future::Cache<String, Entry>),
}

/// A value and how long it should live, so moka can expire each entry on its own schedule.
#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: std::time::Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A namespaced JSON cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    backend: Backend,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Redis(_) => "redis",
            Backend::Local(_) => "local",
        };
        f.debug_struct("Cache").field("backend", &kind).field("prefix", &self.prefix).finish()
    }
}

/// `ttl` give or take up to 10%, so that entries written together expire apart.
pub fn jittered(ttl: Duration) -> Duration {
    let spread = ttl.as_millis() as u64 / 10;
    if spread == 0 {
        return ttl;
    }
    let offset = rand::rng().random_range(0..=2 * spread);
    ttl + Duration::from_millis(offset) - Duration::from_millis(spread)
}

/// Runs one Redis command with the cache's time limit; a failure or a timeout is logged,
/// counted and answered with `None`, so the caller goes on without the cache.
async fn redis_call<T>(op: &'static str, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
    let error = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    metrics::counter!("cache_errors_total", "op" => op).increment(1);
    tracing::warn!(op, error, "cache unavailable; going on without it");
    None
}

impl Cache {
    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Self { backend: Backend::Redis(conn), prefix: prefix.into() }
    }

    pub fn local(prefix: &str) -> Self {
        let cache = moka::future::Cache::builder().max_capacity(LOCAL_CAPACITY).expire_after(PerEntryTtl).build();
        Self { backend: Backend::Local(cache), prefix: prefix.into() }
    }

    /// Redis when a connection is given, in-process otherwise.
    pub fn new(redis: Option<ConnectionManager>, prefix: &str) -> Self {
        match redis {
            Some(conn) => Self::redis(conn, prefix),
            None => Self::local(prefix),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    async fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let key = self.key(key);
        match &self.backend {
            Backend::Local(cache) => cache.get(&key).await.map(|e| e.bytes.to_vec()),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                redis_call("get", conn.get::<_, Option<Vec<u8>>>(&key)).await.flatten()
            }
        }
    }

    /// The cached value, or `None` on a miss, an undecodable entry or a cache outage.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.get_bytes(key).await;
        let hit = bytes.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let outcome = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("cache_requests_total", "outcome" => outcome).increment(1);
        hit
    }

    async fn set_bytes(&self, key: &str, bytes: Vec<u8>, ttl: Duration, only_if_absent: bool) {
        let key = self.key(key);
        let ttl = jittered(ttl);
        match &self.backend {
            Backend::Local(cache) => {
                let entry = Entry { bytes: bytes.into(), ttl };
                if only_if_absent {
                    cache.entry(key).or_insert(entry).await;
                } else {
                    cache.insert(key, entry).await;
                }
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let mut options =
                    redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl.as_millis() as u64));
                if only_if_absent {
                    options = options.conditional_set(redis::ExistenceCheck::NX);
                }
                redis_call("set", conn.set_options::<_, _, Option<String>>(&key, bytes, options)).await;
            }
        }
    }

    /// Stores `value` for about `ttl`, replacing what was there. Writers use this with the
    /// value they just committed.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.set_bytes(key, bytes, ttl, false).await;
        }
    }

    /// Stores `value` only if the key is empty. Readers filling a miss use this, so a value
    /// they read before a concurrent write can never overwrite the writer's fresher one.
    pub async fn fill<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.set_bytes(key, bytes, ttl, true).await;
        }
    }

    /// Removes the key. Returns `false` if the cache could not be reached, for callers
    /// (like token revocation) that must know the write happened.
    pub async fn delete(&self, key: &str) -> bool {
        let key = self.key(key);
        match &self.backend {
            Backend::Local(cache) => {
                cache.invalidate(&key).await;
                true
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                redis_call("delete", conn.del::<_, ()>(&key)).await.is_some()
            }
        }
    }

    /// Stores a marker that must be written for the caller to go on (a revoked token):
    /// unlike [`Cache::put`], a failure is reported.
    pub async fn put_required(&self, key: &str, ttl: Duration) -> anyhow::Result<()> {
        let full = self.key(key);
        match &self.backend {
            Backend::Local(cache) => {
                cache.insert(full, Entry { bytes: Arc::from(&b"1"[..]), ttl }).await;
                Ok(())
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let millis = ttl.as_millis().max(1) as u64;
                tokio::time::timeout(REDIS_TIMEOUT, conn.pset_ex::<_, _, ()>(&full, 1u8, millis))
                    .await
                    .map_err(|_| anyhow::anyhow!("redis timed out"))??;
                Ok(())
            }
        }
    }

    /// Whether a marker written by [`Cache::put_required`] exists. An unreachable cache
    /// answers `false`: a cache outage must not lock every client out.
    pub async fn exists(&self, key: &str) -> bool {
        self.get_bytes(key).await.is_some()
    }

    /// Answers when the backend is reachable (readiness).
    pub async fn ping(&self) -> bool {
        match &self.backend {
            Backend::Local(_) => true,
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                matches!(tokio::time::timeout(REDIS_TIMEOUT, ping).await, Ok(Ok(_)))
            }
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let ttl = jittered(Duration::from_secs(300));
            assert!(ttl >= Duration::from_secs(270) && ttl <= Duration::from_secs(330), "{ttl:?}");
        }
        assert_eq!(jittered(Duration::from_millis(5)), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn local_cache_round_trips_and_fill_never_overwrites() {
        let cache = Cache::local("t");
        assert_eq!(cache.get::<String>("k").await, None);
        cache.put("k", &"fresh", Duration::from_secs(60)).await;
        cache.fill("k", &"stale", Duration::from_secs(60)).await;
        assert_eq!(cache.get::<String>("k").await.as_deref(), Some("fresh"));
        assert!(cache.delete("k").await);
        assert_eq!(cache.get::<String>("k").await, None);
        cache.put_required("revoked", Duration::from_secs(60)).await.unwrap();
        assert!(cache.exists("revoked").await);
    }
}
