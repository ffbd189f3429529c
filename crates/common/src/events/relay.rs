//! The outbox relay: publishes what services wrote into their outbox, at least once and
//! in order per aggregate, and marks it published.
//!
//! Each round claims a batch of unpublished rows with `FOR UPDATE SKIP LOCKED`, so
//! several replicas share the work without publishing the same row twice. A batch holds
//! at most the oldest unpublished row of each aggregate: a later event of an aggregate
//! waits until every earlier one is published, whichever replica holds it, which keeps
//! one order's events in order on the topic.
//!
//! A relay sleeps until the work that wrote to its outbox in this process is done
//! ([`wake`], called by [`super::waking`]), or until [`IDLE_POLL`] has passed, which
//! catches what other replicas of the service wrote: idle, it costs a few statements a
//! second instead of a poll every few milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::Events;

const BATCH_SIZE: i64 = 256;
/// How long an idle relay waits, unless woken, before looking again.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// Published rows are kept this long (for inspection), then deleted.
const KEEP_PUBLISHED: &str = "1 day";

/// One unpublished event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub topic: String,
    pub aggregate_id: Uuid,
    pub envelope: serde_json::Value,
    pub traceparent: String,
    /// Its place in the outbox.
    #[sqlx(default)]
    pub seq: i64,
    /// A later event of the same aggregate waits for this one to be published.
    #[sqlx(default)]
    pub has_successor: bool,
}

/// What one round of [`Relay::publish_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub published: usize,
    /// More rows may be waiting now: the batch was full, or it held back the later events
    /// of one of its aggregates.
    pub more: bool,
}

/// The relays of this process, by the topic they publish to, for [`wake`].
static RELAYS: LazyLock<Mutex<HashMap<String, Vec<Weak<Notify>>>>> = LazyLock::new(Mutex::default);

/// Wakes the relays of this process that publish to `topic`: something was committed to
/// their outbox. A relay busy publishing looks again as soon as it is done.
pub fn wake(topic: &str) {
    let relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
    for relay in relays.get(topic).into_iter().flatten().filter_map(Weak::upgrade) {
        relay.notify_one();
    }
}

/// The relay of one service's outbox.
pub struct Relay {
    service: &'static str,
    db: PgPool,
    events: Events,
    /// Set after a failed round: the broker may have come back empty, so the topics of
    /// the next batch are created before publishing to them.
    recreate_topics: std::sync::atomic::AtomicBool,
    woken: Arc<Notify>,
    idle_poll: Duration,
}

impl Relay {
    pub fn new(service: &'static str, db: PgPool, events: Events) -> Self {
        let woken = Arc::new(Notify::new());
        let mut relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
        let registered = relays.entry(super::topic_of(service)).or_default();
        registered.retain(|relay| relay.strong_count() > 0);
        registered.push(Arc::downgrade(&woken));
        let recreate_topics = std::sync::atomic::AtomicBool::new(true);
        Self { service, db, events, recreate_topics, woken, idle_poll: IDLE_POLL }
    }

    /// With another pause between looks when nobody wakes it (tests).
    #[must_use]
    pub fn with_idle_poll(mut self, idle_poll: Duration) -> Self {
        self.idle_poll = idle_poll;
        self
    }

    /// Publishes one batch and returns how many rows it published. An error means some
    /// rows could not be published; they stay in the outbox for the next round.
    pub async fn publish_pending(&self) -> anyhow::Result<usize> {
        Ok(self.publish_round().await?.published)
    }

    /// [`Relay::publish_pending`], telling whether to look again at once.
    async fn publish_round(&self) -> anyhow::Result<Round> {
        // The batch is claimed and marked published in one statement; what then fails to
        // publish is unmarked before the commit.
        let mut tx = self.db.begin().await?;
        let mut rows: Vec<OutboxRow> = sqlx::query_as(
            "WITH batch AS (
                 SELECT o.id,
                        EXISTS (SELECT 1 FROM outbox later
                                WHERE later.published_at IS NULL
                                  AND later.aggregate_id = o.aggregate_id
                                  AND later.seq > o.seq) AS has_successor
                 FROM outbox o
                 WHERE o.published_at IS NULL
                   AND NOT EXISTS (
                       SELECT 1 FROM outbox earlier
                       WHERE earlier.published_at IS NULL
                         AND earlier.aggregate_id = o.aggregate_id
                         AND earlier.seq < o.seq)
                 ORDER BY o.seq
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox SET published_at = now() FROM batch WHERE outbox.id = batch.id
             RETURNING outbox.id, outbox.seq, outbox.topic, outbox.aggregate_id, outbox.envelope,
                       outbox.traceparent, batch.has_successor",
        )
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        rows.sort_by_key(|row| row.seq);
        if rows.is_empty() {
            return Ok(Round { published: 0, more: false });
        }
        let more = rows.len() as i64 == BATCH_SIZE || rows.iter().any(|r| r.has_successor);
        if self.recreate_topics.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let mut topics: Vec<String> = rows.iter().map(|r| r.topic.clone()).collect();
            topics.sort_unstable();
            topics.dedup();
            self.events.ensure_topics(&topics).await;
        }
        let outcomes = self.events.publish_all(self.service, &rows).await;
        let mut published = 0;
        let mut unpublished = Vec::new();
        let mut failure = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    metrics::counter!("outbox_published_total", "service" => self.service, "topic" => row.topic.clone())
                        .increment(1);
                    published += 1;
                }
                Err(err) => {
                    metrics::counter!("outbox_publish_errors_total", "service" => self.service, "topic" => row.topic.clone())
                        .increment(1);
                    unpublished.push(row.id);
                    failure.get_or_insert((row.topic.clone(), err));
                }
            }
        }
        if !unpublished.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = NULL WHERE id = ANY($1)")
                .bind(&unpublished)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        match failure {
            None => Ok(Round { published, more }),
            Some((topic, err)) => {
                self.recreate_topics.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(err.context(format!("{published} of {} events published to {topic}", rows.len())))
            }
        }
    }

    /// Runs until the process ends, backing off while the broker or database is away.
    /// The backlog gauge and the clean-up run beside it, so the backlog stays visible
    /// while a round waits for an absent broker; it ends with the relay, dropped or not.
    pub async fn run(self) {
        let housekeeping =
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(housekeeping(self.service, self.db.clone())));
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(50), MAX_BACKOFF);
        loop {
            // After a round that left nothing behind, the next look waits to be woken (a
            // wake while publishing counts): an empty look costs three statements.
            match self.publish_round().await {
                Ok(Round { more: false, .. }) => {
                    backoff.reset();
                    let _ = tokio::time::timeout(self.idle_poll, self.woken.notified()).await;
                }
                Ok(Round { more: true, .. }) => backoff.reset(),
                Err(err) => {
                    tracing::warn!(
                        service = self.service,
                        error = format!("{err:#}"),
                        retry_within_ms = backoff.ceiling().as_millis() as u64,
                        "outbox relay could not publish"
                    );
                    backoff.wait().await;
                }
            }
            if housekeeping.is_finished() {
                return;
            }
        }
    }
}

/// Publishes the outbox backlog as a gauge and deletes what has outlived its use:
/// outbox rows published long ago and expired idempotency keys (both in every schema).
async fn housekeeping(service: &'static str, db: PgPool) {
    let mut last_cleanup = Instant::now();
    loop {
        let backlog: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&db).await;
        if let Ok(backlog) = backlog {
            metrics::gauge!("outbox_backlog", "service" => service).set(backlog as f64);
        }
        if last_cleanup.elapsed() >= CLEANUP_EVERY {
            let deleted =
                sqlx::query(&format!("DELETE FROM outbox WHERE published_at < now() - interval '{KEEP_PUBLISHED}'"))
                    .execute(&db)
                    .await;
            if let Err(err) = deleted {
                tracing::warn!(service, error = %err, "could not clean up the outbox");
            }
            let expired = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
                .execute(&db)
                .await;
            if let Err(err) = expired {
                tracing::warn!(service, error = %err, "could not delete expired idempotency keys");
            }
            last_cleanup = Instant::now();
        }
        tokio::time::sleep(BACKLOG_EVERY).await;
    }
}
