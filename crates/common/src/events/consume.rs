//! The consuming side: a service's [`EventHandler`], applied at most once per event with
//! its inbox row in the same transaction ([`apply_once`], [`Subscription::deliver`],
//! [`Subscription::deliver_batch`]), work deferred until that transaction commits
//! ([`on_commit`]), and the inbox's pruning.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Envelope, waking};
use crate::db::is_transient;
use crate::trace;

/// What a service does with an event it consumes. The effect must be written through
/// `tx`: it commits together with the inbox entry that makes redeliveries no-ops.
pub trait EventHandler: Send + Sync + 'static {
    /// Whether the handler does anything with events of `event_type`. Those it does not
    /// want are acknowledged without a transaction or an inbox row (a topic carries every
    /// event of its service; most consumers act on a few).
    fn wants(&self, _event_type: &str) -> bool {
        true
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Runs once the effect has committed (say, to invalidate a cache, which must not
    /// happen before the new state is visible).
    fn after_commit<'a>(&'a self, _event: &'a Envelope) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// One consumer: a service's handler for some topics, applied in the service's schema.
#[derive(Clone)]
pub struct Subscription {
    /// The consumer group: one per service, so replicas share the partitions.
    pub group: String,
    pub topics: Vec<String>,
    pub db: PgPool,
    pub handler: Arc<dyn EventHandler>,
}

impl Subscription {
    /// [`apply_once`] with retries: a failing handler is retried with exponential backoff
    /// [`MAX_ATTEMPTS`] times and then dead-lettered; a database outage is returned as an
    /// error for the caller to retry later, without using up attempts.
    ///
    /// The handling is a consumer span for the subscription's group, the child of the span
    /// that published the event (its `traceparent`), so a trace follows the event from
    /// service to service.
    pub async fn deliver(
        &self,
        topic: &str,
        event: &Envelope,
        traceparent: Option<String>,
    ) -> anyhow::Result<Delivery> {
        let span = consume_span(&self.group, topic, event);
        let work = async {
            let mut backoff = crate::backoff::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            let mut attempt = 1;
            loop {
                match apply_once(&self.db, self.handler.as_ref(), topic, event).await {
                    Ok(delivery) => {
                        count_consumed(topic, &delivery);
                        return Ok(delivery);
                    }
                    // The database is away: no attempt is used up; the caller retries later.
                    Err(err) if is_transient(&err) => return Err(err),
                    Err(err) if attempt >= MAX_ATTEMPTS => {
                        metrics::counter!("events_dead_lettered_total", "topic" => topic.to_owned()).increment(1);
                        tracing::error!(event_id = %event.id, topic, error = format!("{err:#}"), "giving up on an event");
                        return Ok(Delivery::DeadLettered(format!("{err:#}")));
                    }
                    Err(err) => {
                        tracing::warn!(event_id = %event.id, topic, attempt, error = format!("{err:#}"), "event handler failed; retrying");
                        backoff.wait().await;
                        attempt += 1;
                    }
                }
            }
        };
        trace::instrument(span, traceparent.as_deref(), work).await
    }

    /// Applies several events of `topic` as [`Self::deliver`] does one, in one transaction
    /// with their inbox rows written in one statement (the in-process bus hands over a
    /// relay's whole batch this way). Each handling is still a consumer span, the child of
    /// its event's `traceparent`. If a handler fails, the batch is rolled back and every
    /// event is delivered on its own, with [`Self::deliver`]'s retries and dead letters; a
    /// database outage is returned as an error for the caller to retry later.
    pub async fn deliver_batch(
        &self,
        topic: &str,
        events: &[(Envelope, Option<String>)],
    ) -> anyhow::Result<Vec<Delivery>> {
        let handler = self.handler.as_ref();
        let wanted: Vec<&(Envelope, Option<String>)> =
            events.iter().filter(|(e, _)| handler.wants(&e.event_type)).collect();
        if wanted.len() <= 1 {
            return self.one_by_one(topic, events).await;
        }
        let together = deferring(waking(self.apply_batch(topic, &wanted)), Result::is_ok).await;
        match together {
            Ok(applied) => {
                let mut deliveries = Vec::with_capacity(events.len());
                for (event, _) in events {
                    let delivery = if !handler.wants(&event.event_type) {
                        Delivery::Ignored
                    } else if applied.contains(&event.id) {
                        handler.after_commit(event).await;
                        Delivery::Applied
                    } else {
                        Delivery::Duplicate
                    };
                    count_consumed(topic, &delivery);
                    deliveries.push(delivery);
                }
                Ok(deliveries)
            }
            Err(err) if is_transient(&err) => Err(err),
            Err(err) => {
                tracing::warn!(topic, error = format!("{err:#}"), "a batch of events failed; applying them one by one");
                self.one_by_one(topic, events).await
            }
        }
    }

    /// [`Self::deliver`] for each event in turn.
    async fn one_by_one(&self, topic: &str, events: &[(Envelope, Option<String>)]) -> anyhow::Result<Vec<Delivery>> {
        let mut deliveries = Vec::with_capacity(events.len());
        for (event, traceparent) in events {
            deliveries.push(self.deliver(topic, event, traceparent.clone()).await?);
        }
        Ok(deliveries)
    }

    /// The transaction of [`Self::deliver_batch`]: the ids of the events it applied (the
    /// others were in the inbox already).
    async fn apply_batch(&self, topic: &str, events: &[&(Envelope, Option<String>)]) -> anyhow::Result<Vec<Uuid>> {
        let ids: Vec<Uuid> = events.iter().map(|(e, _)| e.id).collect();
        let types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
        let mut tx = self.db.begin().await?;
        let fresh: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (event_id, topic, event_type)
             SELECT e.id, $2, e.event_type FROM UNNEST($1::uuid[], $3::text[]) AS e(id, event_type)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
        )
        .bind(&ids)
        .bind(topic)
        .bind(&types)
        .fetch_all(&mut *tx)
        .await?;
        for (event, traceparent) in events.iter().copied() {
            if !fresh.contains(&event.id) {
                continue;
            }
            let span = consume_span(&self.group, topic, event);
            trace::instrument(span, traceparent.as_deref(), self.handler.handle(&mut tx, event)).await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }
}

/// How an event was dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Applied,
    /// Its id was already in the inbox: a redelivery, nothing done.
    Duplicate,
    /// The handler does not want events of its type: nothing done, nothing recorded.
    Ignored,
    /// The handler kept failing; the reason goes with the record to the dead letters.
    DeadLettered(String),
}

/// Attempts at a failing handler before its record goes to the dead letters.
pub const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Applies `event` once: the inbox row and the handler's effect commit together, so a
/// second delivery of the same id finds the row and changes nothing. An event the handler
/// does not want costs nothing.
pub async fn apply_once(
    db: &PgPool,
    handler: &dyn EventHandler,
    topic: &str,
    event: &Envelope,
) -> anyhow::Result<Delivery> {
    if !handler.wants(&event.event_type) {
        return Ok(Delivery::Ignored);
    }
    waking(apply_wanted(db, handler, topic, event)).await
}

tokio::task_local! {
    /// What the handler being applied asked to run once its transaction commits.
    static ON_COMMIT: std::cell::RefCell<Vec<BoxFuture<'static, ()>>>;
}

/// Runs `work` once the transaction of the event being handled has committed, and never
/// if it does not (say, to tell clients of a change, which must not happen before the new
/// state is visible). Called outside a handler, it runs `work` at once.
pub async fn on_commit(work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Some(Box::pin(work) as BoxFuture<'static, ()>);
    let _outside_a_handler = ON_COMMIT.try_with(|deferred| deferred.borrow_mut().extend(work.take()));
    if let Some(work) = work {
        work.await;
    }
}

/// Runs `work` (an event's transaction), then what it asked [`on_commit`] to run, if
/// `committed` says its outcome is a commit; otherwise that is dropped.
async fn deferring<T>(work: impl Future<Output = T>, committed: impl FnOnce(&T) -> bool) -> T {
    let (output, deferred) = ON_COMMIT
        .scope(std::cell::RefCell::default(), async {
            let output = work.await;
            (output, ON_COMMIT.with(std::cell::RefCell::take))
        })
        .await;
    if committed(&output) {
        for work in deferred {
            work.await;
        }
    }
    output
}

async fn apply_wanted(
    db: &PgPool,
    handler: &dyn EventHandler,
    topic: &str,
    event: &Envelope,
) -> anyhow::Result<Delivery> {
    let applied = |delivery: &anyhow::Result<Delivery>| matches!(delivery, Ok(Delivery::Applied));
    let delivery = deferring(apply_in_transaction(db, handler, topic, event), applied).await;
    if applied(&delivery) {
        handler.after_commit(event).await;
    }
    delivery
}

async fn apply_in_transaction(
    db: &PgPool,
    handler: &dyn EventHandler,
    topic: &str,
    event: &Envelope,
) -> anyhow::Result<Delivery> {
    let mut tx = db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, topic, event_type) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.id)
    .bind(topic)
    .bind(&event.event_type)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Delivery::Duplicate);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Delivery::Applied)
}

/// Counts what became of a consumed event (`events_consumed_total`).
fn count_consumed(topic: &str, delivery: &Delivery) {
    let outcome = match delivery {
        Delivery::Applied => "applied",
        Delivery::Ignored => "ignored",
        _ => "duplicate",
    };
    metrics::counter!("events_consumed_total", "topic" => topic.to_owned(), "outcome" => outcome).increment(1);
}

/// The consumer span of one event's handling.
fn consume_span(group: &str, topic: &str, event: &Envelope) -> tracing::Span {
    tracing::info_span!(
        "consume",
        otel.name = %format_args!("{topic} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.consumer.group.name = group,
        messaging.message.id = %event.id,
        event_type = %event.event_type,
    )
}

/// Inbox rows one statement of [`prune_inbox`] deletes: a short transaction holding few
/// locks, however large the backlog.
const PRUNE_BATCH: i64 = 1000;
/// How often a service prunes its inbox. Rows only become old enough by the hour, so
/// once an hour costs one statement while there is nothing to delete.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the inbox rows of events applied more than `retention` ago, a batch at a time,
/// and returns how many went. Safe while `retention` is longer than the broker keeps
/// records: a record is appended before it is applied, so the broker no longer holds the
/// event of a row older than that, and no redelivery can come looking for it. Replicas
/// pruning at once skip each other's rows (`SKIP LOCKED`).
pub async fn prune_inbox(db: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE event_id IN (
                 SELECT event_id FROM inbox
                 WHERE applied_at < now() - make_interval(secs => $1)
                 ORDER BY applied_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(retention.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
        // Between batches, let the service's own work have the pool.
        tokio::task::yield_now().await;
    }
}

/// Prunes the inbox of `db`'s schema every [`PRUNE_EVERY`], the first time at a random
/// point of the first hour, so that replicas started together (or a process restarting
/// in a loop) do not prune in step.
pub fn spawn_inbox_pruning(service: &'static str, db: PgPool, retention: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let first = PRUNE_EVERY.mul_f64(rand::random::<f64>());
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + first, PRUNE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match prune_inbox(&db, retention).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(service, pruned, "pruned the inbox"),
                Err(err) => tracing::warn!(service, error = %err, "could not prune the inbox; will retry in an hour"),
            }
        }
    })
}
