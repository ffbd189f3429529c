//! The events backbone: what happened, told to the other services at least once and
//! applied by each of them at most once.
//!
//! - [`emit`] writes an event into the service's outbox inside the caller's transaction,
//!   so the event exists exactly when the change commits;
//! - [`Relay`] publishes unpublished outbox rows in order per aggregate, sharing the work
//!   between replicas with `FOR UPDATE SKIP LOCKED`;
//! - [`Events`] is where they go: Kafka ([`kafka`]) when `KAFKA_BROKERS` is set, the
//!   in-process [`bus`] otherwise (`shop` only);
//! - a consumer's [`EventHandler`] runs through [`Subscription::deliver`], which records
//!   the event id in the inbox in the same transaction as the effect, retries with
//!   backoff and gives up on a record (dead letter) only when the handler itself keeps
//!   failing;
//! - [`prune_inbox`] forgets inbox rows once the broker can no longer redeliver their
//!   events, an hourly job of every consuming service ([`spawn_inbox_pruning`]).

pub mod bus;
mod consume;
pub mod kafka;
mod relay;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::contracts::EventType;

pub use consume::{
    Delivery, EventHandler, MAX_ATTEMPTS, PRUNE_EVERY, Subscription, apply_once, on_commit, prune_inbox,
    spawn_inbox_pruning,
};
pub use relay::{Relay, wake};

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
    let (envelope, json) = new_envelope(event_type, aggregate_id, data)?;
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
    emitted(topic);
    Ok(envelope)
}

/// [`emit`] of one of the platform's events ([`EventType`]), to its owner's topic.
pub async fn emit_event(
    conn: &mut PgConnection,
    kind: EventType,
    aggregate_id: Uuid,
    data: &impl Serialize,
) -> Result<Envelope, sqlx::Error> {
    emit(conn, kind.topic(), kind.as_str(), aggregate_id, data).await
}

/// [`emit`] for several events in one statement: `(event type, aggregate id, data)` each,
/// written in the order given.
pub async fn emit_many<T: Serialize>(
    conn: &mut PgConnection,
    topic: &str,
    events: &[(&str, Uuid, T)],
) -> Result<Vec<Envelope>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let traceparent = trace::outgoing();
    let mut envelopes = Vec::with_capacity(events.len());
    let mut jsons = Vec::with_capacity(events.len());
    for (event_type, aggregate_id, data) in events {
        let (envelope, json) = new_envelope(event_type, *aggregate_id, data)?;
        jsons.push(json);
        envelopes.push(envelope);
    }
    let ids: Vec<Uuid> = envelopes.iter().map(|e| e.id).collect();
    let aggregates: Vec<Uuid> = envelopes.iter().map(|e| e.aggregate_id).collect();
    let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
    // `WITH ORDINALITY` keeps the order given, which is the order of the outbox's `seq`.
    sqlx::query(
        "INSERT INTO outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
         SELECT e.id, $2, e.aggregate_id, e.event_type, e.envelope, $6
         FROM UNNEST($1::uuid[], $3::uuid[], $4::text[], $5::jsonb[]) WITH ORDINALITY
              AS e(id, aggregate_id, event_type, envelope, n)
         ORDER BY e.n",
    )
    .bind(&ids)
    .bind(topic)
    .bind(&aggregates)
    .bind(&types)
    .bind(&jsons)
    .bind(traceparent)
    .execute(&mut *conn)
    .await?;
    emitted(topic);
    Ok(envelopes)
}

/// An event ready for the outbox, for a statement of the caller's own that makes a
/// change and writes its event at once (`INSERT INTO outbox (id, topic, aggregate_id,
/// event_type, envelope, traceparent) SELECT $…` from the change's `RETURNING`): the
/// statement is then the whole transaction, where [`emit`] adds a statement to it.
/// Inside [`waking`], the relay is woken once the work is done.
#[derive(Debug)]
pub struct Outgoing {
    pub id: Uuid,
    pub topic: &'static str,
    pub event_type: &'static str,
    pub aggregate_id: Uuid,
    pub envelope: serde_json::Value,
    pub traceparent: String,
}

impl Outgoing {
    pub fn new(kind: EventType, aggregate_id: Uuid, data: &impl Serialize) -> Result<Self, sqlx::Error> {
        let (envelope, json) = new_envelope(kind.as_str(), aggregate_id, data)?;
        emitted(kind.topic());
        Ok(Self {
            id: envelope.id,
            topic: kind.topic(),
            event_type: kind.as_str(),
            aggregate_id,
            envelope: json,
            traceparent: trace::outgoing(),
        })
    }
}

/// A new event's envelope, and its JSON as the outbox keeps it.
fn new_envelope(
    event_type: &str,
    aggregate_id: Uuid,
    data: &impl Serialize,
) -> Result<(Envelope, serde_json::Value), sqlx::Error> {
    let envelope = Envelope {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        occurred_at: Utc::now(),
        aggregate_id,
        data: serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
    };
    let json = serde_json::to_value(&envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    Ok((envelope, json))
}

/// Notes that the work in [`waking`] emitted to `topic`.
fn emitted(topic: &str) {
    let _outside_waking = EMITTED.try_with(|emitted| {
        let mut emitted = emitted.borrow_mut();
        if !emitted.iter().any(|t| t == topic) {
            emitted.push(topic.to_owned());
        }
    });
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

    /// Starts delivering the subscription's topics to its handler: the consumer's task
    /// with Kafka; in-process, the relays deliver to it and there is no task.
    pub async fn subscribe(&self, subscription: Subscription) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Self::Kafka(kafka) => {
                let dead_letters: Vec<String> = subscription.topics.iter().map(|t| dead_letter_topic(t)).collect();
                self.ensure_topics(&[subscription.topics.clone(), dead_letters].concat()).await;
                Some(tokio::spawn(kafka::consume(kafka.clone(), subscription)))
            }
            Self::InProcess(bus) => {
                bus.subscribe(subscription);
                None
            }
        }
    }

    /// Hands a relay's batch of outbox rows to their destination, each in its producer
    /// span: what became of each row, in order.
    async fn publish_all(&self, service: &'static str, rows: &[relay::OutboxRow]) -> Vec<anyhow::Result<()>> {
        match self {
            Self::Kafka(kafka) => {
                futures::future::join_all(rows.iter().map(|row| {
                    trace::instrument(publish_span(service, row), Some(&row.traceparent), kafka.publish_row(row))
                }))
                .await
            }
            Self::InProcess(bus) => bus.publish_all(service, rows).await,
        }
    }
}

/// A producer span per event, the child of the span that wrote it to the outbox.
fn publish_span(service: &'static str, row: &relay::OutboxRow) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("{} publish", row.topic),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.destination.name = %row.topic,
        messaging.message.id = %row.id,
        service = service,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::is_transient;

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
