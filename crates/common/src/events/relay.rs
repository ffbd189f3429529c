//! The outbox relay: publishes what services wrote into their outbox, at least once and
//! in order per aggregate, and marks it published.
//!
//! One relay of a service publishes at a time, whichever replica it runs in: a round
//! claims its batch under a transaction-scoped advisory lock of the schema, and a replica
//! that does not get it finds nothing to do this round. The batch is the oldest
//! unpublished rows, of which it holds at most the oldest of each aggregate: a later
//! event of an aggregate waits until every earlier one is published, so that a failed
//! publish cannot let a later one overtake it, which keeps one order's events in order on
//! the topic. This relies on what every emitter does: it writes an aggregate's event in
//! the transaction that changed the aggregate's row, after that change, so the row's lock
//! orders the events' `seq` as their commits.
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
    /// Another replica's relay was publishing this outbox: nothing was looked at.
    pub busy: bool,
}

/// How soon a relay looks again when another replica's relay had the outbox: that one
/// may have missed what this replica wrote (it is woken by its own writes).
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// A round's claim: whether this relay held the outbox, and each row it claimed.
#[derive(sqlx::FromRow)]
struct Claimed {
    held: bool,
    id: Option<Uuid>,
    seq: Option<i64>,
    topic: Option<String>,
    aggregate_id: Option<Uuid>,
    envelope: Option<serde_json::Value>,
    traceparent: Option<String>,
    has_successor: Option<bool>,
}

impl Claimed {
    fn row(self) -> Option<OutboxRow> {
        Some(OutboxRow {
            id: self.id?,
            topic: self.topic?,
            aggregate_id: self.aggregate_id?,
            envelope: self.envelope?,
            traceparent: self.traceparent?,
            seq: self.seq?,
            has_successor: self.has_successor?,
        })
    }
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
        // publish is unmarked before the commit. (Replicas sharing the rows with `SKIP
        // LOCKED` instead needed a look, for each row, for an earlier one of its aggregate
        // held by another replica; under load those lookups, through index entries of rows
        // published since the last vacuum, cost more than the rest of the round.)
        let mut tx = self.db.begin().await?;
        let claimed: Vec<Claimed> = sqlx::query_as(
            "WITH relay AS (
                 SELECT pg_try_advisory_xact_lock(hashtextextended('outbox relay ' || current_schema(), 0)) AS held),
             candidates AS (
                 SELECT id, aggregate_id, seq FROM outbox
                 WHERE published_at IS NULL AND (SELECT held FROM relay)
                 ORDER BY seq LIMIT $1 FOR UPDATE),
             batch AS (
                 SELECT DISTINCT ON (aggregate_id) id, count(*) OVER (PARTITION BY aggregate_id) > 1 AS has_successor
                 FROM candidates ORDER BY aggregate_id, seq),
             published AS (
                 UPDATE outbox SET published_at = now() FROM batch WHERE outbox.id = batch.id
                 RETURNING outbox.id, outbox.seq, outbox.topic, outbox.aggregate_id, outbox.envelope,
                           outbox.traceparent, batch.has_successor)
             SELECT relay.held, published.* FROM relay LEFT JOIN published ON true",
        )
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        let busy = !claimed.first().is_some_and(|c| c.held);
        let mut rows: Vec<OutboxRow> = claimed.into_iter().filter_map(Claimed::row).collect();
        rows.sort_by_key(|row| row.seq);
        if rows.is_empty() {
            return Ok(Round { published: 0, more: false, busy });
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
            None => Ok(Round { published, more, busy: false }),
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
                Ok(Round { busy: true, .. }) => {
                    backoff.reset();
                    tokio::time::sleep(BUSY_RETRY).await;
                }
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
            let expired = sqlx::query(
                "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours' AND status IS NOT NULL",
            )
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
