//! The first cache level: encoded responses in the process, in front of Redis.
//!
//! With Redis, every replica subscribes to the deployment's invalidation channel, and a
//! write publishes the keys it changed before it answers. Pub/sub delivers in order on a
//! live connection, so this replica knows it has applied every invalidation published
//! before any message it receives. It publishes a heartbeat of its own every quarter of
//! `CACHE_STALE_MAX`, and serves entries only while one sent less than `CACHE_STALE_MAX`
//! ago has come back: so whatever was written more than `CACHE_STALE_MAX` ago is never
//! served stale, whatever happens to the channel, while an entry itself may live as long
//! as its value's time to live (a product read once a minute still hits). When the
//! subscription is lost the level is emptied (what was published meanwhile never
//! arrives), and it is bypassed until heartbeats come back. Without Redis (`shop` alone)
//! there is one replica and every invalidation is local.
//!
//! A reader takes a [`Ticket`] before it reads the level below and fills with it after;
//! an invalidation of the key in between voids the ticket, so a value read before a write
//! is never kept after the write's invalidation has been applied here.

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use metrics::Counter;

use super::Footprint;

/// Invalidation counters, by a hash of the key: enough that unrelated keys rarely share
/// one (sharing only costs a fill).
const SLOTS: usize = 4096;

/// The longest an entry is kept, whatever its value's time to live below: invalidations
/// keep it fresh, this only turns the level over. Each entry is kept a little less, at
/// random, so that entries filled together (a warm-up, a flush) do not all expire in the
/// same second. Short, it costs: at a minute, every product a store sells was read again
/// from Redis once a minute, and so was the whole level at once after a warm-up.
const MAX_TTL: Duration = Duration::from_secs(600);

/// What the level holds: a value of any type (a cached response, a page's ids).
type Entry = Arc<dyn Any + Send + Sync>;

/// What an entry costs beyond its body, as measured: `shop` holding the whole
/// 100k-product catalogue (421-byte bodies) grew by 640 bytes a product more than with
/// the level off, its table sized for five times as many; the rest is the table's slot
/// and index, the `Arc`s, the tag and the allocator's rounding. Counted with a margin, so
/// that `L1_CACHE_BYTES` bounds the process's memory, not only the bodies.
const ENTRY_OVERHEAD: usize = 230;

/// What the table is sized for at first: a product's entry.
const TYPICAL_ENTRY: u64 = 640;

/// One entry: the value, when it stops being served (seconds after the level's origin),
/// and its weight, fixed when it is filled as the table requires.
#[derive(Clone)]
struct Slot {
    value: Entry,
    until: u32,
    weight: u32,
}

#[derive(Clone)]
struct Weight;

/// An entry's key: 128 bits of the key's hash, rather than the key itself (a product's
/// is 44 bytes, in an allocation of its own). Two independent random-keyed SipHashes: a
/// collision among the level's few hundred thousand keys has odds of one in 2^90.
type Key = u128;

impl quick_cache::Weighter<Key, Slot> for Weight {
    fn weight(&self, _key: &Key, slot: &Slot) -> u64 {
        u64::from(slot.weight)
    }
}

/// What a reader saw before it read the level below: the flush count and its key's
/// invalidation count. A fill is kept only if neither moved.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    slot: usize,
    count: u64,
}

pub(crate) struct L1 {
    entries: quick_cache::sync::Cache<Key, Slot, Weight>,
    /// The two halves of a [`Key`].
    hashers: [std::hash::RandomState; 2],
    /// `CACHE_STALE_MAX` when other replicas may write (Redis configured); `None` alone.
    stale_max: Option<Duration>,
    /// What `confirmed_until` counts from.
    origin: Instant,
    /// Nanoseconds after `origin` until which entries may be served: a heartbeat sent at
    /// `s` and received back confirms every invalidation published before `s`, so the
    /// level may serve until `s + CACHE_STALE_MAX`.
    confirmed_until: AtomicU64,
    /// Bumped by every flush.
    epoch: AtomicU64,
    /// Bumped by every invalidation of a key hashing to the slot.
    slots: Box<[AtomicU64]>,
    /// Generations of key families (all listing pages, say): a family's keys carry its
    /// generation, so invalidating the family retires every one of its entries at once.
    /// Read by every lookup of a family's key, written only by its invalidations.
    families: RwLock<HashMap<String, u64>>,
    hits: Counter,
    misses: Counter,
    bypassed: Counter,
}

impl L1 {
    /// `stale_max` is `None` without Redis: one replica, whose invalidations are all local.
    pub(crate) fn new(max_bytes: u64, stale_max: Option<Duration>) -> Self {
        // The table is sized for products; it grows if the entries are smaller.
        let estimated = usize::try_from(max_bytes / TYPICAL_ENTRY).unwrap_or(usize::MAX).max(16);
        let entries = quick_cache::sync::Cache::with_weighter(estimated, max_bytes, Weight);
        Self {
            entries,
            hashers: Default::default(),
            stale_max,
            origin: Instant::now(),
            confirmed_until: AtomicU64::new(if stale_max.is_none() { u64::MAX } else { 0 }),
            epoch: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            families: RwLock::default(),
            hits: metrics::counter!("cache_requests_total", "level" => "l1", "outcome" => "hit"),
            misses: metrics::counter!("cache_requests_total", "level" => "l1", "outcome" => "miss"),
            bypassed: metrics::counter!("cache_requests_total", "level" => "l1", "outcome" => "bypassed"),
        }
    }

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether entries may be served: always without Redis; with it, while a heartbeat
    /// confirmed the channel less than `CACHE_STALE_MAX` ago.
    pub(crate) fn is_live(&self) -> bool {
        self.serving_now().is_some()
    }

    /// The level's clock (seconds since its origin) while entries may be served, `None`
    /// while not: what [`L1::find`] needs, from one reading of the time.
    pub(crate) fn serving_now(&self) -> Option<u32> {
        let now = self.nanos_since_origin(Instant::now());
        (now < self.confirmed_until.load(Ordering::Acquire))
            .then(|| u32::try_from(now / 1_000_000_000).unwrap_or(u32::MAX))
    }

    /// A heartbeat sent at `sent` came back: everything published before it is applied.
    pub(crate) fn confirm(&self, sent: Instant) {
        if let Some(stale_max) = self.stale_max {
            self.confirmed_until.fetch_max(self.nanos_since_origin(sent + stale_max), Ordering::AcqRel);
        }
    }

    /// Stops serving until the next heartbeat comes back (Redis stopped answering).
    pub(crate) fn lapse(&self) {
        if self.stale_max.is_some() {
            self.confirmed_until.store(0, Ordering::Release);
        }
    }

    fn key(&self, key: &str) -> Key {
        let [high, low] = &self.hashers;
        (u128::from(high.hash_one(key)) << 64) | u128::from(low.hash_one(key))
    }

    fn slot(&self, key: &str) -> usize {
        (self.key(key) as usize) % SLOTS
    }

    /// The entry under `key`, when this level may serve and holds one of that type.
    pub(crate) fn get<V: Any + Send + Sync>(&self, key: &str) -> Option<Arc<V>> {
        let now = self.serving_now();
        let found = now.and_then(|now| self.find::<V>(key, now));
        let live = now.is_some();
        self.count(u64::from(found.is_some()), u64::from(live && found.is_none()), u64::from(!live));
        found
    }

    /// The entry under `key` at `now` (from [`L1::serving_now`]), not counted: for a
    /// caller looking up many keys at once, which checks liveness and counts once.
    pub(crate) fn find<V: Any + Send + Sync>(&self, key: &str, now: u32) -> Option<Arc<V>> {
        let slot = self.entries.get(&self.key(key))?;
        if slot.until <= now {
            return None;
        }
        slot.value.downcast::<V>().ok()
    }

    /// Counts lookups in bulk: one shared counter increment per kind, not per key.
    pub(crate) fn count(&self, hits: u64, misses: u64, bypassed: u64) {
        for (counter, n) in [(&self.hits, hits), (&self.misses, misses), (&self.bypassed, bypassed)] {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let slot = self.slot(key);
        // The flush count first: a flush between the two reads voids the ticket too.
        let epoch = self.epoch.load(Ordering::Acquire);
        Ticket { epoch, slot, count: self.slots[slot].load(Ordering::Acquire) }
    }

    /// Whether the level serves and no invalidation or flush came after `tickets` were
    /// taken: what was read with them is still what the level would serve.
    pub(crate) fn tickets_hold(&self, tickets: &[Ticket]) -> bool {
        self.is_live() && tickets.iter().all(|ticket| self.ticket_holds(*ticket))
    }

    fn ticket_holds(&self, ticket: Ticket) -> bool {
        self.epoch.load(Ordering::Acquire) == ticket.epoch
            && self.slots[ticket.slot].load(Ordering::Acquire) == ticket.count
    }

    /// Keeps `value` under `key` (for at most [`MAX_TTL`]), unless an invalidation or a
    /// flush came after `ticket` was taken.
    pub(crate) fn fill<V: Footprint>(&self, key: &str, value: Arc<V>, ticket: Ticket) {
        let Some(now) = self.serving_now().filter(|_| self.ticket_holds(ticket)) else { return };
        let weight = u32::try_from(value.footprint() + ENTRY_OVERHEAD).unwrap_or(u32::MAX);
        let ttl = MAX_TTL.as_secs() as u32;
        let until = now.saturating_add(ttl - rand::random_range(0..ttl / 4));
        let key = self.key(key);
        self.entries.insert(key, Slot { value, until, weight });
        // An invalidation that bumped the slot after the check above may have run its
        // removal before this insert: look again, and take the entry back if so.
        if !self.ticket_holds(ticket) {
            self.entries.remove(&key);
        }
    }

    /// Forgets `key` here, and voids the tickets of readers in flight for it.
    pub(crate) fn invalidate(&self, key: &str) {
        self.slots[self.slot(key)].fetch_add(1, Ordering::AcqRel);
        self.entries.remove(&self.key(key));
    }

    /// The generation of a family of keys (0 until first invalidated).
    pub(crate) fn family(&self, family: &str) -> u64 {
        self.families.read().unwrap_or_else(|e| e.into_inner()).get(family).copied().unwrap_or(0)
    }

    /// Retires every entry of `family`: its keys carry the next generation from now on.
    pub(crate) fn invalidate_family(&self, family: &str) {
        *self.families.write().unwrap_or_else(|e| e.into_inner()).entry(family.to_owned()).or_default() += 1;
    }

    /// Empties the level and voids every ticket out (the subscription was lost, so
    /// invalidations may have been missed); with Redis, it is bypassed until the next
    /// heartbeat comes back.
    pub(crate) fn flush(&self) {
        self.lapse();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }
}

/// What travels on the invalidation channel, a line each: a key as it is, or a family
/// with `*` before its name (or a heartbeat, `~` before it).
pub(crate) fn family_message(family: &str) -> String {
    format!("*{family}")
}

/// Applies one line of a message from the channel.
pub(crate) fn apply(l1: &L1, line: &str) {
    match line.strip_prefix('*') {
        Some(family) => l1.invalidate_family(family),
        None => l1.invalidate(line),
    }
}

/// The prefix of heartbeat lines: `~<replica>:<sequence>`.
const HEARTBEAT: char = '~';

/// Keeps this replica subscribed to the invalidation channel for as long as the process
/// runs, applying what arrives and sending heartbeats (through `publisher`) that confirm
/// the channel. The level is flushed when the subscription is lost, and serves again once
/// a heartbeat has come back.
pub(crate) async fn subscribe(
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    channel: Arc<str>,
    l1: Arc<L1>,
) {
    let Some(stale_max) = l1.stale_max else { return };
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut sequence = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), subscribed(&client, &channel)).await {
            Ok(Ok(mut pubsub)) => {
                backoff.reset();
                // Heartbeats sent and not yet back, oldest first.
                let mut sent: std::collections::VecDeque<(u64, Instant)> = std::collections::VecDeque::new();
                let mut beat = tokio::time::interval(stale_max / 4);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Ok(payload) = message.get_payload::<String>() else { continue };
                            for line in payload.lines() {
                                match line.strip_prefix(HEARTBEAT) {
                                    Some(beat) => confirm(&l1, &replica, beat, &mut sent),
                                    None => apply(&l1, line),
                                }
                            }
                        }
                        _ = beat.tick() => {
                            sequence += 1;
                            sent.push_back((sequence, Instant::now()));
                            if sent.len() > 64 {
                                sent.pop_front();
                            }
                            let mut conn = publisher.clone();
                            let heartbeat = format!("{HEARTBEAT}{replica}:{sequence}");
                            let publish = redis::cmd("PUBLISH").arg(channel.as_ref()).arg(heartbeat).to_owned();
                            let _ = tokio::time::timeout(stale_max, publish.query_async::<i64>(&mut conn)).await;
                        }
                    }
                }
                l1.flush();
                tracing::warn!(
                    "lost the cache invalidation channel; the in-process cache is bypassed until it is back"
                );
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "could not subscribe to cache invalidations"),
            Err(_) => tracing::debug!("subscribing to cache invalidations timed out"),
        }
        backoff.wait().await;
    }
}

/// A heartbeat line (without its prefix) came back: if it is one of ours, everything
/// published before it was sent has been applied.
fn confirm(l1: &L1, replica: &str, beat: &str, sent: &mut std::collections::VecDeque<(u64, Instant)>) {
    let Some((from, sequence)) = beat.split_once(':') else { return };
    let Ok(sequence) = sequence.parse::<u64>() else { return };
    if from != replica {
        return;
    }
    while let Some(&(oldest, at)) = sent.front() {
        if oldest > sequence {
            break;
        }
        sent.pop_front();
        if oldest == sequence {
            l1.confirm(at);
        }
    }
}

/// A pub/sub connection subscribed to `channel`.
pub(crate) async fn subscribed(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests;
