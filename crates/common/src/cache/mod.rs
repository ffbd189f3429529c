//! Cache-aside storage in two levels: encoded responses in the process ([`l1`]), in
//! front of Redis when configured (shared by every replica), or of an in-process moka
//! cache otherwise (`shop` only).
//!
//! A cache that is down slows requests down; it never fails them. Every Redis error is
//! logged, counted and then treated as a miss (reads) or skipped (writes); it also takes
//! the first level out of use until its invalidation channel is back. TTLs get random
//! jitter so that entries written together do not all expire together.

mod l1;
pub(crate) use l1::subscribed;

use l1::L1;
pub use l1::{Cached, Ticket, etag_of};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::FutureExt;
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

    /// Cache-aside with one loader per key: a hit is returned; on a miss, the first
    /// request runs `loader` and fills the cache (for `ttl(&value)`, so misses can be
    /// cached briefly) while concurrent requests for the same key wait for its result
    /// instead of each querying the database.
    pub async fn load<T, F, Fut>(&self, key: &str, ttl: fn(&T) -> Duration, loader: F) -> Result<T, LoadError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        if let Some(hit) = self.get::<T>(key).await {
            return Ok(hit);
        }
        let (bytes, _) = self.load_flight(key, Fill::IfAbsent(key), ttl, loader).await?;
        serde_json::from_slice(&bytes).map_err(|e| LoadError::from_anyhow(&e.into()))
    }

    /// [`Cache::load`] without decoding: the value's JSON as the cache holds it, for
    /// handlers that send it on unchanged (a hit costs no parsing and no serializing).
    pub async fn load_json<T, F, Fut>(&self, key: &str, ttl: fn(&T) -> Duration, loader: F) -> Result<Bytes, LoadError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        if let Some(bytes) = self.get_bytes(key).await {
            l2_outcome(true);
            return Ok(json_of(bytes));
        }
        l2_outcome(false);
        let (bytes, _) = self.load_flight(key, Fill::IfAbsent(key), ttl, loader).await?;
        Ok(Bytes::copy_from_slice(&bytes))
    }

    /// Like [`Cache::load_json`], for an entry that a whole family of writes makes stale at
    /// once (listing pages, say). Each such write [`bump`](Cache::bump)s the counter
    /// `generation_key` after it commits; the entry is stored with the generation it was
    /// loaded in and counts only while that generation is current. The counter and the
    /// entry are read in one round trip, so a read after a write never sees an entry
    /// from before it. With Redis away, nobody can say which generation is current, and
    /// the loader answers, uncached.
    pub async fn load_json_in_generation<T, F, Fut>(
        &self,
        key: &str,
        generation_key: &str,
        ttl: fn(&T) -> Duration,
        loader: F,
    ) -> Result<Bytes, LoadError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let Some((generation, entry)) = self.get_in_generation(key, generation_key).await else {
            let value = loader().await.map_err(|e| LoadError::from_anyhow(&e))?;
            return serde_json::to_vec(&value).map(Bytes::from).map_err(|e| LoadError::from_anyhow(&e.into()));
        };
        if let Some(bytes) = entry
            && unversioned(&bytes).0 == generation
        {
            l2_outcome(true);
            return Ok(json_of(bytes));
        }
        l2_outcome(false);
        // Readers of one generation share a load; a reader of the next never joins it.
        let flight = format!("{key}@{generation}");
        let (bytes, _) = self.load_flight(&flight, Fill::Generation(key, generation), ttl, loader).await?;
        Ok(Bytes::copy_from_slice(&bytes))
    }

    /// The current generation (0 before the first bump) and the entry under `key`, in one
    /// round trip; `None` when Redis does not answer.
    async fn get_in_generation(&self, key: &str, generation_key: &str) -> Option<(i64, Option<Vec<u8>>)> {
        match &self.backend {
            Backend::Local(cache) => {
                let generation = self.counter(generation_key).await?;
                Some((generation, cache.get(&self.key(key)).await.map(|e| e.bytes.to_vec())))
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let keys = [self.key(generation_key), self.key(key)];
                let [generation, entry] = self.redis_call("get", conn.mget::<_, [Option<Vec<u8>>; 2]>(&keys)).await?;
                let generation = match generation {
                    None => 0,
                    Some(bytes) => std::str::from_utf8(&bytes).ok()?.parse().ok()?,
                };
                Some((generation, entry))
            }
        }
    }

    /// The one load of `key` in flight, started by the first caller: the value's JSON.
    async fn load_flight<T, F, Fut>(
        &self,
        key: &str,
        fill: Fill<'_>,
        ttl: fn(&T) -> Duration,
        loader: F,
    ) -> Result<(Arc<[u8]>, Duration), LoadError>
    where
        T: Serialize + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(key) {
                Some(flight) => flight.clone(),
                None => {
                    let cache = self.clone();
                    let owned_key = key.to_owned();
                    let store = match fill {
                        Fill::IfAbsent(key) => Some((key.to_owned(), 0, true)),
                        Fill::Generation(key, generation) => Some((key.to_owned(), generation, false)),
                        Fill::Nowhere => None,
                    };
                    let load = loader();
                    let flight: Flight = async move {
                        let outcome = async {
                            let value = load.await?;
                            let json = serde_json::to_vec(&value)?;
                            let ttl = ttl(&value);
                            if let Some((key, version, only_if_absent)) = store {
                                cache.set_bytes(&key, version, &json, ttl, only_if_absent).await;
                            }
                            Ok::<_, anyhow::Error>((Arc::<[u8]>::from(json), ttl))
                        }
                        .await
                        .map_err(|e| LoadError::from_anyhow(&e));
                        cache.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(&owned_key);
                        outcome
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.to_owned(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// A value's encoded JSON through both levels: the first level's entry, or Redis's
    /// (or, without Redis, nothing below the first level), or one `loader` per key under a
    /// stampede, whose value fills the levels for `ttl(&value)`. A write must
    /// [`invalidate`](Cache::invalidate) the key after it changed the value below.
    pub async fn load_cached<T, F, Fut>(
        &self,
        key: &str,
        ttl: fn(&T) -> Duration,
        loader: F,
    ) -> Result<Arc<Cached>, LoadError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let Some(l1) = &self.l1 else {
            return self.load_json(key, ttl, loader).await.map(|json| Arc::new(Cached::new(json)));
        };
        if let Some(hit) = l1.get::<Cached>(key) {
            return Ok(hit);
        }
        let ticket = l1.ticket(key);
        let json = match self.backend {
            Backend::Local(_) => Bytes::copy_from_slice(&self.load_flight(key, Fill::Nowhere, ttl, loader).await?.0),
            Backend::Redis(_) => self.load_json(key, ttl, loader).await?,
        };
        let cached = Arc::new(Cached::new(json));
        l1.fill(key, cached.clone(), ticket);
        Ok(cached)
    }

    /// [`Cache::load_cached`] for many keys at once: the first level's entries, then one
    /// Redis round trip for the rest, then one `loader` call for what neither held, given
    /// the indices of those keys and answering their values in that order.
    pub async fn load_cached_many<T, F, Fut>(
        &self,
        keys: &[String],
        ttl: fn(&T) -> Duration,
        loader: F,
    ) -> Result<Vec<Arc<Cached>>, LoadError>
    where
        T: Serialize,
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = anyhow::Result<Vec<T>>>,
    {
        let mut found: Vec<Option<Arc<Cached>>> = vec![None; keys.len()];
        let mut tickets = vec![None; keys.len()];
        if let Some(l1) = &self.l1 {
            let now = l1.serving_now();
            let live = now.is_some();
            for (i, key) in keys.iter().enumerate() {
                found[i] = now.and_then(|now| l1.find::<Cached>(key, now));
                tickets[i] = found[i].is_none().then(|| l1.ticket(key));
            }
            let hits = found.iter().filter(|f| f.is_some()).count() as u64;
            let others = keys.len() as u64 - hits;
            if live { l1.count(hits, others, 0) } else { l1.count(0, 0, others) }
        }
        let fill = |i: usize, cached: &Arc<Cached>| {
            if let (Some(l1), Some(ticket)) = (&self.l1, tickets[i]) {
                l1.fill(&keys[i], cached.clone(), ticket);
            }
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|i| found[*i].is_none()).collect();
        if let Backend::Redis(conn) = &self.backend
            && !missing.is_empty()
        {
            let mut conn = conn.clone();
            let full: Vec<String> = missing.iter().map(|i| self.key(&keys[*i])).collect();
            if let Some(entries) = self.redis_call("get", conn.mget::<_, Vec<Option<Vec<u8>>>>(&full)).await {
                for (i, entry) in missing.iter().zip(entries) {
                    l2_outcome(entry.is_some());
                    if let Some(bytes) = entry {
                        let cached = Arc::new(Cached::new(json_of(bytes)));
                        fill(*i, &cached);
                        found[*i] = Some(cached);
                    }
                }
            }
        }
        let missing: Vec<usize> = (0..keys.len()).filter(|i| found[*i].is_none()).collect();
        if !missing.is_empty() {
            let values = loader(missing.clone()).await.map_err(|e| LoadError::from_anyhow(&e))?;
            if values.len() != missing.len() {
                return Err(LoadError::from_anyhow(&anyhow::anyhow!(
                    "the loader answered {} of {} values",
                    values.len(),
                    missing.len()
                )));
            }
            let mut fills = Vec::new();
            for (i, value) in missing.into_iter().zip(values) {
                let json = serde_json::to_vec(&value).map_err(|e| LoadError::from_anyhow(&e.into()))?;
                let ttl = ttl(&value);
                let cached = Arc::new(Cached::new(Bytes::from(json)));
                fill(i, &cached);
                if self.is_redis() {
                    fills.push((i, cached.clone(), ttl));
                }
                found[i] = Some(cached);
            }
            // Side by side: the connection pipelines them.
            futures::future::join_all(
                fills.iter().map(|(i, cached, ttl)| self.set_bytes(&keys[*i], 0, &cached.json, *ttl, true)),
            )
            .await;
        }
        Ok(found.into_iter().map(|c| c.expect("every key was found or loaded")).collect())
    }

    /// The first level's entry of any type (a page's ids, say), when it may serve.
    pub fn l1_get<V: std::any::Any + Send + Sync>(&self, key: &str) -> Option<Arc<V>> {
        self.l1.as_ref()?.get(key)
    }

    /// Taken before reading what [`Cache::l1_fill`] will keep.
    pub fn l1_ticket(&self, key: &str) -> Option<Ticket> {
        self.l1.as_ref().map(|l1| l1.ticket(key))
    }

    pub fn l1_fill<V: std::any::Any + Send + Sync>(&self, key: &str, value: Arc<V>, ticket: Option<Ticket>) {
        if let (Some(l1), Some(ticket)) = (&self.l1, ticket) {
            l1.fill(key, value, ticket);
        }
    }

    /// Tickets for many keys at once, taken before reading what depends on them all (a
    /// page made of products); `None` without a first level.
    pub fn l1_tickets(&self, keys: &[String]) -> Option<Vec<Ticket>> {
        self.l1.as_ref().map(|l1| keys.iter().map(|key| l1.ticket(key)).collect())
    }

    /// Whether nothing invalidated since `tickets` were taken, and the first level serves:
    /// what was made from those keys then may be served now. Counted as one lookup.
    pub fn l1_tickets_hold(&self, tickets: &[Ticket]) -> bool {
        let Some(l1) = &self.l1 else { return false };
        let holds = l1.tickets_hold(tickets);
        l1.count(u64::from(holds), u64::from(!holds), 0);
        holds
    }

    /// The generation of a family of first-level keys, to put in each of its keys.
    pub fn l1_family(&self, family: &str) -> u64 {
        self.l1.as_ref().map_or(0, |l1| l1.family(family))
    }

    /// After a write has changed what is below (and committed): forgets `keys` and every
    /// key of `families` in this process's first level before the write answers, and
    /// tells every other replica's through Redis.
    pub async fn invalidate(&self, keys: &[String], families: &[&str]) {
        if let Some(l1) = &self.l1 {
            for key in keys {
                l1.invalidate(key);
            }
            for family in families {
                l1.invalidate_family(family);
            }
        }
        let (Some(channel), Backend::Redis(conn)) = (&self.invalidations, &self.backend) else { return };
        let lines: Vec<String> = keys.iter().cloned().chain(families.iter().map(|f| l1::family_message(f))).collect();
        if lines.is_empty() {
            return;
        }
        let mut conn = conn.clone();
        let publish = redis::cmd("PUBLISH").arg(channel.as_ref()).arg(lines.join("\n")).to_owned();
        self.redis_call("publish", publish.query_async::<i64>(&mut conn)).await;
    }

    /// Forgets loads in flight for `key`, so a request after a write never joins a load
    /// that started before it.
    pub fn forget_flight(&self, key: &str) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// The current value of a counter (0 if never bumped), or `None` if the cache cannot
    /// be reached. Used as a version that invalidates many entries at once.
    pub async fn counter(&self, key: &str) -> Option<i64> {
        match &self.backend {
            Backend::Local(_) => Some(*self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(key).unwrap_or(&0)),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                self.redis_call("counter", conn.get::<_, Option<i64>>(self.key(key))).await.map(|v| v.unwrap_or(0))
            }
        }
    }

    /// Increments a counter; `false` if the cache could not be reached.
    pub async fn bump(&self, key: &str) -> bool {
        match &self.backend {
            Backend::Local(_) => {
                *self.counters.lock().unwrap_or_else(|e| e.into_inner()).entry(key.to_owned()).or_default() += 1;
                true
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                self.redis_call("bump", conn.incr::<_, _, i64>(self.key(key), 1)).await.is_some()
            }
        }
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
        cache.put_required("revoked", Duration::from_secs(60)).await.unwrap();
        assert!(cache.exists("revoked").await);
    }

    #[tokio::test]
    async fn concurrent_misses_run_one_loader() {
        let cache = Cache::local("t");
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ttl: fn(&u32) -> Duration = |_| Duration::from_secs(60);
        let results = futures::future::join_all((0..20).map(|_| {
            let loads = loads.clone();
            cache.load("k", ttl, move || async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(7u32)
            })
        }))
        .await;
        assert!(results.iter().all(|r| *r.as_ref().unwrap() == 7));
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(cache.get::<u32>("k").await, Some(7));
    }

    #[tokio::test]
    async fn versioned_writes_never_go_back_in_time() {
        let cache = Cache::local("t");
        cache.fill("k", &"read before the writes", Duration::from_secs(60)).await;
        cache.put_versioned("k", 20, &"second write", Duration::from_secs(60)).await;
        cache.put_versioned("k", 10, &"first write, arriving late", Duration::from_secs(60)).await;
        cache.fill("k", &"another stale read", Duration::from_secs(60)).await;
        assert_eq!(cache.get::<String>("k").await.as_deref(), Some("second write"));
        assert_eq!(unversioned(b"12:{}"), (12, &b"{}"[..]));
        assert_eq!(unversioned(b"{\"a\":1}"), (0, &b"{\"a\":1}"[..]));
    }

    #[tokio::test]
    async fn an_entry_counts_only_in_the_generation_it_was_loaded_in() {
        let cache = Cache::local("t");
        let ttl: fn(&u32) -> Duration = |_| Duration::from_secs(60);
        let load = |value: u32| move || async move { Ok(value) };
        assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(1)).await.unwrap()[..], b"1");
        assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(2)).await.unwrap()[..], b"1", "cached");
        assert!(cache.bump("gen").await);
        assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(3)).await.unwrap()[..], b"3", "reloaded");
        assert_eq!(&cache.load_json_in_generation("page", "gen", ttl, load(4)).await.unwrap()[..], b"3");
    }

    #[tokio::test]
    async fn counters_start_at_zero_and_bump() {
        let cache = Cache::local("t");
        assert_eq!(cache.counter("v").await, Some(0));
        assert!(cache.bump("v").await);
        assert_eq!(cache.counter("v").await, Some(1));
    }
}
