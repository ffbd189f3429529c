//! Cache-aside storage in two levels: encoded responses in the process ([`l1`]), in
//! front of Redis when configured (shared by every replica), or of an in-process moka
//! cache otherwise (`shop` only).
//!
//! A cache that is down slows requests down; it never fails them. Every Redis error is
//! logged, counted and then treated as a miss (reads) or skipped (writes); it also takes
//! the first level out of use until its invalidation channel is back. TTLs get random
//! jitter so that entries written together do not all expire together.
//!
//! Here: the two levels' types, reads and writes of one key. Beside it: `cached` (an
//! entry, [`Cached`]: an encoded response and its entity tag), `load` (cache-aside
//! loading, one loader per key, generations), `first_level` (the first level used
//! directly, and invalidation of both levels) and [`l1`] itself.

mod cached;
mod first_level;
mod l1;
mod load;
pub(crate) use l1::subscribed;

pub use cached::{Cached, Footprint, etag_of};
use l1::L1;
pub use l1::Ticket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::future::{BoxFuture, Shared};

use moka::Expiry;
use rand::Rng;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a Redis call may take before the cache gives up and the request goes on
/// without it.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The cap on in-process entries; moka evicts the least useful beyond it.
const LOCAL_CAPACITY: u64 = 100_000;

/// Connects to Redis with timeouts short enough that an outage costs each request at
/// most a fraction of a second; the client is for connections of other kinds (pub/sub).
pub async fn connect_redis(url: &secrecy::SecretString) -> anyhow::Result<(ConnectionManager, redis::Client)> {
    use secrecy::ExposeSecret;
    let client =
        redis::Client::open(url.expose_secret()).map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT * 4)
        .set_response_timeout(REDIS_TIMEOUT)
        .set_number_of_retries(1);
    let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok((manager, client))
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

/// A load in progress, shared by every request that misses the same key meanwhile: the
/// value's JSON and how long it should be cached.
type Flight = Shared<BoxFuture<'static, Result<(Arc<[u8]>, Duration), LoadError>>>;

/// Why [`Cache::load`] failed. Shared between the requests that waited for the same load,
/// so it keeps only what they need: the message, and whether the database was away (a
/// 503 worth retrying) or something else went wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    pub transient: bool,
    message: Arc<str>,
}

impl LoadError {
    fn from_anyhow(err: &anyhow::Error) -> Self {
        Self { transient: crate::db::is_transient(err), message: format!("{err:#}").into() }
    }
}

impl From<LoadError> for crate::ApiError {
    /// A database that was away is a 503 worth retrying; anything else a bare 500.
    fn from(err: LoadError) -> Self {
        if err.transient { Self::unavailable(err) } else { Self::internal(err) }
    }
}

/// How a loaded value is stored: where nothing is yet (a write since the load has put a
/// fresher value there), or as of a generation, over whatever an earlier one left.
enum Fill<'a> {
    IfAbsent(&'a str),
    Generation(&'a str, i64),
    /// Nowhere below the first level (`shop` alone: the first level is the cache).
    Nowhere,
}

/// A namespaced JSON cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    backend: Backend,
    prefix: Arc<str>,
    /// Loads in flight in this process, by key: one loader per key under a stampede.
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    /// Counters of the in-process backend (Redis keeps its own).
    counters: Arc<Mutex<HashMap<String, i64>>>,
    /// Makes the in-process compare-and-set of versioned writes atomic.
    versioned_writes: Arc<tokio::sync::Mutex<()>>,
    /// The compare-and-set of versioned writes, run inside Redis.
    put_if_newer: Arc<redis::Script>,
    /// The first level, unless `L1_CACHE_BYTES=0`.
    l1: Option<Arc<L1>>,
    /// The Redis channel where writes tell the other replicas' first levels (Redis only).
    invalidations: Option<Arc<str>>,
}

/// How the first level is sized and how stale it may be.
#[derive(Debug, Clone, Copy)]
pub struct L1Options {
    /// `L1_CACHE_BYTES`; 0 turns the first level off.
    pub max_bytes: u64,
    /// `CACHE_STALE_MAX`: the most another replica's write may be missed for.
    pub stale_max: Duration,
}

impl Default for L1Options {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, stale_max: Duration::from_secs(1) }
    }
}

/// Sets KEYS[1] to ARGV[2] (for ARGV[3] ms) unless it holds a version >= ARGV[1].
const PUT_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%-?%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Every entry is stored as `<version>:<json>` (version 0 when unversioned).
fn versioned(version: i64, json: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{version}:").into_bytes();
    bytes.extend_from_slice(json);
    bytes
}

/// An entry's JSON, without its version, sharing the entry's buffer.
fn json_of(bytes: Vec<u8>) -> Bytes {
    let start = bytes.len() - unversioned(&bytes).1.len();
    Bytes::from(bytes).slice(start..)
}

fn unversioned(bytes: &[u8]) -> (i64, &[u8]) {
    let Some(colon) = bytes.iter().position(|b| *b == b':') else { return (0, bytes) };
    match std::str::from_utf8(&bytes[..colon]).ok().and_then(|v| v.parse().ok()) {
        Some(version) => (version, &bytes[colon + 1..]),
        None => (0, bytes),
    }
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

fn l2_outcome(hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!("cache_requests_total", "level" => "l2", "outcome" => outcome).increment(1);
}

impl Cache {
    fn with_backend(backend: Backend, prefix: &str, l1: Option<Arc<L1>>) -> Self {
        Self {
            backend,
            prefix: prefix.into(),
            flights: Arc::default(),
            counters: Arc::default(),
            versioned_writes: Arc::default(),
            put_if_newer: Arc::new(redis::Script::new(PUT_IF_NEWER)),
            l1,
            invalidations: None,
        }
    }

    /// Redis behind the first level. `client` opens the subscription to the invalidation
    /// channel (spawned here, so this needs a Tokio runtime); until its first heartbeat
    /// is back the first level is bypassed.
    pub fn redis(conn: ConnectionManager, client: redis::Client, prefix: &str, options: L1Options) -> Self {
        let l1 = (options.max_bytes > 0).then(|| Arc::new(L1::new(options.max_bytes, Some(options.stale_max))));
        let mut cache = Self::with_backend(Backend::Redis(conn), prefix, l1.clone());
        let channel: Arc<str> = format!("{prefix}:l1-invalidations").into();
        if let (Some(l1), Backend::Redis(conn)) = (l1, &cache.backend) {
            tokio::spawn(l1::subscribe(client, conn.clone(), channel.clone(), l1));
        }
        cache.invalidations = Some(channel);
        cache
    }

    /// In-process only, with the default first level.
    pub fn local(prefix: &str) -> Self {
        Self::local_with(prefix, L1Options::default())
    }

    pub fn local_with(prefix: &str, options: L1Options) -> Self {
        let cache = moka::future::Cache::builder().max_capacity(LOCAL_CAPACITY).expire_after(PerEntryTtl).build();
        let l1 = (options.max_bytes > 0).then(|| Arc::new(L1::new(options.max_bytes, None)));
        Self::with_backend(Backend::Local(cache), prefix, l1)
    }

    /// Redis when a connection is given, in-process otherwise.
    pub fn new(redis: Option<(ConnectionManager, redis::Client)>, prefix: &str, options: L1Options) -> Self {
        match redis {
            Some((conn, client)) => Self::redis(conn, client, prefix, options),
            None => Self::local_with(prefix, options),
        }
    }

    /// Runs one Redis command with the cache's time limit; a failure or a timeout is
    /// logged, counted and answered with `None`, so the caller goes on without the cache.
    /// The first level cannot count on its invalidations then: it is bypassed until its
    /// next heartbeat comes back.
    async fn redis_call<T>(&self, op: &'static str, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        let error = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        metrics::counter!("cache_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error, "cache unavailable; going on without it");
        if let Some(l1) = &self.l1 {
            l1.lapse();
        }
        None
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
                self.redis_call("get", conn.get::<_, Option<Vec<u8>>>(&key)).await.flatten()
            }
        }
    }

    /// The cached value, or `None` on a miss, an undecodable entry or a cache outage.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.get_bytes(key).await;
        let hit = bytes.as_deref().and_then(|b| serde_json::from_slice(unversioned(b).1).ok());
        l2_outcome(hit.is_some());
        hit
    }

    /// Stores `json` under `key` as of `version`: unconditionally, or only where nothing is.
    async fn set_bytes(&self, key: &str, version: i64, json: &[u8], ttl: Duration, only_if_absent: bool) {
        let key = self.key(key);
        let bytes = versioned(version, json);
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
                self.redis_call("set", conn.set_options::<_, _, Option<String>>(&key, bytes, options)).await;
            }
        }
    }

    /// Stores `value` for about `ttl`, replacing what was there. Writers use this with the
    /// value they just committed.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.set_bytes(key, 0, &bytes, ttl, false).await;
        }
    }

    /// Stores `value` as version `version` unless the cache already holds a newer (or the
    /// same) version. Writers use it with the version of the row they just committed, so
    /// two writers finishing in the wrong order cannot leave the older value behind, and a
    /// reader's earlier fill (always version 0) never outlives the write.
    pub async fn put_versioned<T: Serialize>(&self, key: &str, version: i64, value: &T, ttl: Duration) {
        let Ok(json) = serde_json::to_vec(value) else { return };
        let bytes = versioned(version, &json);
        let key = self.key(key);
        let ttl = jittered(ttl);
        match &self.backend {
            Backend::Local(cache) => {
                let _guard = self.versioned_writes.lock().await;
                let current = cache.get(&key).await.map(|e| unversioned(&e.bytes).0);
                if current.is_none_or(|current| current < version) {
                    cache.insert(key, Entry { bytes: bytes.into(), ttl }).await;
                }
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let mut invocation = self.put_if_newer.key(&key);
                invocation.arg(version).arg(bytes).arg(ttl.as_millis() as u64);
                self.redis_call("put_versioned", invocation.invoke_async::<i64>(&mut conn)).await;
            }
        }
    }

    /// Stores `value` only if the key is empty. Readers filling a miss use this, so a value
    /// they read before a concurrent write can never overwrite the writer's fresher one.
    pub async fn fill<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.set_bytes(key, 0, &bytes, ttl, true).await;
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
mod tests;
