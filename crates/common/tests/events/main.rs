//! The events backbone against real PostgreSQL and a real Kafka-protocol broker.

mod broker;
mod delivery;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::db::{self, Schema};
use common::events::{self, Envelope, EventHandler, Events, Relay, Subscription};
use common::testing::{TestBroker, TestDb, read_topic};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

const TOPIC: &str = "test.events";
const SCHEMA: Schema = Schema { name: "evtest", role: "evtest_svc" };

/// A schema with the outbox and inbox (and no service tables), plus an `effects` table
/// the test handler writes to.
async fn schema() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    db::migrate(&db.url, SCHEMA, &Migrator::DEFAULT).await.unwrap();
    let pool = db::connect(&db.url, SCHEMA, 5).await.unwrap();
    sqlx::query("CREATE TABLE effects (event_id UUID NOT NULL, aggregate_id UUID NOT NULL, n INT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool)
}

/// Writes an effect row per event; fails every time on `test.poison`; does not want
/// `test.ignored`.
struct RecordEffect;

impl EventHandler for RecordEffect {
    fn wants(&self, event_type: &str) -> bool {
        event_type != "test.ignored"
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(event.event_type != "test.poison", "this event can never be applied");
            sqlx::query("INSERT INTO effects (event_id, aggregate_id, n) VALUES ($1, $2, $3)")
                .bind(event.id)
                .bind(event.aggregate_id)
                .bind(event.data["n"].as_i64().unwrap_or(-1) as i32)
                .execute(tx)
                .await?;
            Ok(())
        })
    }
}

/// Fails on `test.fixable` until it is fixed, as a consumer with a bug does until its fix
/// is deployed; applies everything else as [`RecordEffect`] does.
#[derive(Default)]
struct Fixable {
    fixed: AtomicBool,
}

impl EventHandler for Fixable {
    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let broken = event.event_type == "test.fixable" && !self.fixed.load(Ordering::SeqCst);
            anyhow::ensure!(!broken, "a bug, fixed in the next release");
            RecordEffect.handle(tx, event).await
        })
    }
}

async fn emit_committed(pool: &PgPool, event_type: &str, aggregate: Uuid, n: i64) -> Envelope {
    let mut tx = pool.begin().await.unwrap();
    let envelope = events::emit(&mut tx, TOPIC, event_type, aggregate, &serde_json::json!({"n": n})).await.unwrap();
    tx.commit().await.unwrap();
    envelope
}

async fn drain(relay: &Relay) {
    for _ in 0..100 {
        if relay.publish_pending().await.unwrap() == 0 {
            return;
        }
    }
    panic!("the outbox did not drain");
}

/// What most broker tests start from: a broker of their own, a schema, and a relay of its
/// outbox.
struct Rig {
    broker: TestBroker,
    db: TestDb,
    pool: PgPool,
    events: Events,
    relay: Relay,
}

async fn rig() -> Rig {
    let broker = TestBroker::start().await;
    let (db, pool) = schema().await;
    let events = kafka(&broker).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    Rig { broker, db, pool, events, relay }
}

async fn kafka(broker: &TestBroker) -> Events {
    kafka_with(broker, events::kafka::Options::default()).await
}

async fn kafka_with(broker: &TestBroker, options: events::kafka::Options) -> Events {
    let events = Events::connect_with(Some(&broker.brokers()), options).unwrap();
    events.ensure_topics(&[TOPIC.to_owned(), events::dead_letter_topic(TOPIC)]).await;
    events
}

/// The test handler on `TOPIC` in consumer group `group`.
async fn subscribe(events: &Events, pool: &PgPool, group: impl Into<String>) {
    let subscription = Subscription {
        group: group.into(),
        topics: vec![TOPIC.to_owned()],
        db: pool.clone(),
        handler: Arc::new(RecordEffect),
    };
    events.subscribe(subscription).await;
}

async fn effects(pool: &PgPool) -> Vec<(Uuid, i32)> {
    sqlx::query_as("SELECT event_id, n FROM effects ORDER BY n").fetch_all(pool).await.unwrap()
}

async fn wait_for_effects(pool: &PgPool, count: usize) -> Vec<(Uuid, i32)> {
    for _ in 0..300 {
        let rows = effects(pool).await;
        if rows.len() >= count {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {count} effects, have {:?}", effects(pool).await);
}

/// The events applied once `count` effects are in and no more arrive for a moment;
/// fails if any was applied twice.
async fn applied_once(pool: &PgPool, count: usize) -> HashSet<Uuid> {
    wait_for_effects(pool, count).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = effects(pool).await;
    let applied: HashSet<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(applied.len(), rows.len(), "each record applied once");
    applied
}

fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}
