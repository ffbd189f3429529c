//! Cache-aside loading: a hit is served from the first level or Redis; on a miss one
//! loader per key runs while concurrent requests for it wait; and counters that version
//! many entries at once (a generation).

use futures::FutureExt as _;

use super::*;

impl Cache {
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
            return Box::pin(self.load_json(key, ttl, loader)).await.map(|json| Arc::new(Cached::new(json)));
        };
        if let Some(hit) = l1.get::<Cached>(key) {
            return Ok(hit);
        }
        // Past a miss, boxed: a hit's future, inside every read handler's, stays this small
        // instead of the size of the round trips below, which was copied whole each time the
        // handler's future moved (1.5% of a cached read's instructions, counted with callgrind).
        Box::pin(async move {
            let ticket = l1.ticket(key);
            let json = match self.backend {
                Backend::Local(_) => {
                    Bytes::copy_from_slice(&self.load_flight(key, Fill::Nowhere, ttl, loader).await?.0)
                }
                Backend::Redis(_) => self.load_json(key, ttl, loader).await?,
            };
            let cached = Arc::new(Cached::new(json));
            l1.fill(key, cached.clone(), ticket);
            Ok(cached)
        })
        .await
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
}
