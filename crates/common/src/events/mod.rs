//! The events backbone: what happened, told to the other services at least once and
//! applied by each of them at most once.
//!
//! - [`emit`] writes an event into the service's outbox inside the caller's transaction,
//!   so the event exists exactly when the change commits;
//! - [`Relay`] publishes unpublished outbox rows in order per aggregate, sharing the work
//!   between replicas with `FOR UPDATE SKIP LOCKED`;
//! - [`Events`] is where they go: Kafka ([`kafka`]) when `KAFKA_BROKERS` is set, the
//!   in-process [`bus`] otherwise (`shop` only);
//! - a consumer's [`EventHandler`] runs through [`deliver`], which records the event id in
//!   the inbox in the same transaction as the effect, retries with backoff and gives up
//!   on a record (dead letter) only when the handler itself keeps failing;
//! - [`prune_inbox`] forgets inbox rows once the broker can no longer redeliver their
//!   events, an hourly job of every consuming service ([`spawn_inbox_pruning`]).

pub mod bus;
pub mod kafka;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use relay::{Relay, wake};

use crate::db::is_transient;
use crate::trace;

/// The JSON value of every event record (API.md, "Events").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub aggregate_id: Uuid,
    pub data: serde_json::Value,
}

/// The topic a service publishes to: `<service>.events`.
pub fn topic_of(service: &str) -> String {
    format!("{service}.events")
}

/// Where a consumer parks the records of `topic` it cannot apply.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

tokio::task_local! {
    /// The topics emitted to by the work [`waking`] runs.
    static EMITTED: std::cell::RefCell<Vec<String>>;
}

/// Runs `work` (a request, an event's handling), then wakes the relays of every topic it
/// emitted to: its transactions are over by then, so the relays find the rows committed.
pub async fn waking<F: Future>(work: F) -> F::Output {
    let (output, emitted) = EMITTED
        .scope(std::cell::RefCell::default(), async {
            let output = work.await;
            (output, EMITTED.with(std::cell::RefCell::take))
        })
        .await;
    for topic in emitted {
        wake(&topic);
    }
    output
}

/// Writes an event into the outbox of the connection's schema. Call it with the
/// transaction that makes the change: the event is published if and only if it commits.
/// Inside [`waking`], the relay is woken once the work is done; elsewhere (a background
/// job) it finds the event on its next look.
pub async fn emit(
    conn: &mut PgConnection,
    topic: &str,
    event_type: &str,
    aggregate_id: Uuid,
    data: &impl Serialize,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        occurred_at: Utc::now(),
        aggregate_id,
        data: serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
    };
    let json = serde_json::to_value(&envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.id)
    .bind(topic)
    .bind(aggregate_id)
    .bind(event_type)
    .bind(json)
    .bind(trace::outgoing())
    .execute(conn)
    .await?;
    let _outside_waking = EMITTED.try_with(|emitted| {
        let mut emitted = emitted.borrow_mut();
        if !emitted.iter().any(|t| t == topic) {
            emitted.push(topic.to_owned());
        }
    });
    Ok(envelope)
}

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

async fn apply_wanted(
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
    handler.after_commit(event).await;
    Ok(Delivery::Applied)
}

/// [`apply_once`] with retries: a failing handler is retried with exponential backoff
/// [`MAX_ATTEMPTS`] times and then dead-lettered; a database outage is returned as an
/// error for the caller to retry later, without using up attempts.
///
/// The handling is a consumer span for `group`, the child of the span that published the
/// event (its `traceparent`), so a trace follows the event from service to service.
pub async fn deliver(
    db: &PgPool,
    group: &str,
    handler: &dyn EventHandler,
    topic: &str,
    event: &Envelope,
    traceparent: Option<String>,
) -> anyhow::Result<Delivery> {
    let span = tracing::info_span!(
        "consume",
        otel.name = %format_args!("{topic} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.consumer.group.name = group,
        messaging.message.id = %event.id,
        event_type = %event.event_type,
    );
    let work = async {
        let mut backoff = crate::backoff::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            match apply_once(db, handler, topic, event).await {
                Ok(delivery) => {
                    let outcome = match delivery {
                        Delivery::Applied => "applied",
                        Delivery::Ignored => "ignored",
                        _ => "duplicate",
                    };
                    metrics::counter!("events_consumed_total", "topic" => topic.to_owned(), "outcome" => outcome)
                        .increment(1);
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

/// Where a process's events go: Kafka, or subscribers in the same process.
#[derive(Clone)]
pub enum Events {
    Kafka(Arc<kafka::Kafka>),
    InProcess(Arc<bus::Bus>),
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kafka(_) => "Events::Kafka",
            Self::InProcess(_) => "Events::InProcess",
        })
    }
}

impl Events {
    /// Kafka when brokers are given, in-process otherwise. Connecting is lazy: a broker
    /// that is down now is retried by the relays and consumers, not fatal here.
    pub fn connect(brokers: Option<&str>) -> anyhow::Result<Self> {
        Self::connect_with(brokers, kafka::Options::default())
    }

    /// [`Events::connect`], with Kafka used as `options` say.
    pub fn connect_with(brokers: Option<&str>, options: kafka::Options) -> anyhow::Result<Self> {
        Ok(match brokers {
            Some(brokers) => Self::Kafka(Arc::new(kafka::Kafka::with_options(brokers, options)?)),
            None => Self::InProcess(Arc::new(bus::Bus::default())),
        })
    }

    /// Creates the topics if the broker lacks them. A broker that cannot be reached is
    /// logged, not fatal: the relay creates its topic again when it can publish.
    pub async fn ensure_topics(&self, topics: &[String]) {
        if let Self::Kafka(kafka) = self
            && let Err(err) = kafka.ensure_topics(topics).await
        {
            tracing::warn!(error = format!("{err:#}"), "could not create topics yet; will retry on publish");
        }
    }

    /// Starts the outbox relay of a service's schema.
    pub fn spawn_relay(&self, service: &'static str, db: PgPool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Relay::new(service, db, self.clone()).run())
    }

    /// Starts delivering the subscription's topics to its handler.
    pub async fn subscribe(&self, subscription: Subscription) {
        match self {
            Self::Kafka(kafka) => {
                let dead_letters: Vec<String> = subscription.topics.iter().map(|t| dead_letter_topic(t)).collect();
                self.ensure_topics(&[subscription.topics.clone(), dead_letters].concat()).await;
                tokio::spawn(kafka::consume(kafka.clone(), subscription));
            }
            Self::InProcess(bus) => bus.subscribe(subscription),
        }
    }

    /// Hands one outbox row to its destination.
    async fn publish(&self, row: &relay::OutboxRow) -> anyhow::Result<()> {
        match self {
            Self::Kafka(kafka) => kafka.publish_row(row).await,
            Self::InProcess(bus) => bus.publish(row).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_the_field_names_of_the_contract() {
        let envelope = Envelope {
            id: Uuid::nil(),
            event_type: "user.registered".into(),
            occurred_at: DateTime::from_timestamp(0, 0).unwrap(),
            aggregate_id: Uuid::nil(),
            data: serde_json::json!({"k": 1}),
        };
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "type": "user.registered",
                "occurred_at": "1970-01-01T00:00:00Z",
                "aggregate_id": "00000000-0000-0000-0000-000000000000",
                "data": {"k": 1},
            })
        );
        assert_eq!(topic_of("user"), "user.events");
        assert_eq!(dead_letter_topic("order.events"), "order.events.dlq");
    }

    #[test]
    fn only_connection_failures_are_transient() {
        assert!(is_transient(&anyhow::Error::from(sqlx::Error::PoolTimedOut)));
        assert!(is_transient(&anyhow::Error::from(sqlx::Error::PoolTimedOut).context("applying")));
        assert!(!is_transient(&anyhow::Error::from(sqlx::Error::RowNotFound)));
        assert!(!is_transient(&anyhow::anyhow!("bad data")));
    }
}
