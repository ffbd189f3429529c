//! The events backbone against real PostgreSQL and a real Kafka-protocol broker.

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

#[tokio::test]
async fn committed_events_are_published_once_with_the_envelope_and_rolled_back_ones_never() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let relay = Relay::new("test", pool.clone(), kafka(&broker).await);

    let mut tx = pool.begin().await.unwrap();
    let rolled_back =
        events::emit(&mut tx, TOPIC, "test.happened", Uuid::now_v7(), &serde_json::json!({"n": 1})).await.unwrap();
    tx.rollback().await.unwrap();
    let aggregate = Uuid::now_v7();
    let committed = emit_committed(&pool, "test.happened", aggregate, 2).await;

    drain(&relay).await;
    drain(&relay).await;
    let records = read_topic(&broker.brokers(), TOPIC, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(aggregate.to_string().as_str()));
    let envelope: Envelope = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(envelope, committed);
    assert_ne!(envelope.id, rolled_back.id);
    let value = record.json();
    let mut fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["aggregate_id", "data", "id", "occurred_at", "type"]);
    assert!(common::trace::parse(&record.headers["traceparent"]).is_some(), "{:?}", record.headers);
    assert_eq!(record.headers["event-type"], "test.happened");
}

#[tokio::test]
async fn with_the_broker_down_writes_go_on_and_everything_arrives_in_order_once_it_is_back() {
    let mut broker = TestBroker::reserve();
    let (_db, pool) = schema().await;
    let events = Events::connect(Some(&broker.brokers())).unwrap();
    let relay = tokio::spawn(Relay::new("test-down", pool.clone(), events).run());

    let aggregates: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for n in 0..30 {
        emit_committed(&pool, "test.happened", aggregates[n % 3], n as i64).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(unpublished, 30, "nothing is lost or marked while the broker is away");

    broker.resume().await;
    let records = read_topic(&broker.brokers(), TOPIC, 30, Duration::from_secs(90)).await;
    relay.abort();
    assert_eq!(records.len(), 30);
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    for record in &records {
        per_key.entry(record.key.clone().unwrap()).or_default().push(record.json()["data"]["n"].as_i64().unwrap());
    }
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "events of {key} arrive in the order they were written");
        assert_eq!(ns.len(), 10);
    }
}

#[tokio::test]
async fn an_event_redelivered_after_its_effect_committed_changes_nothing() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka(&broker).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    let aggregate = Uuid::now_v7();
    let first = emit_committed(&pool, "test.happened", aggregate, 1).await;
    drain(&relay).await;

    // A consumer that applied the event and died before committing its offset: the
    // effect and the inbox entry are in, the offset is not.
    let applied = events::apply_once(&pool, &RecordEffect, TOPIC, &first).await.unwrap();
    assert_eq!(applied, events::Delivery::Applied);

    // Its successor in the same group starts from the uncommitted offset and gets the
    // event again, then the next one of the same aggregate (same partition, after it).
    let group = format!("test-{}", Uuid::new_v4().simple());
    subscribe(&events, &pool, group).await;
    emit_committed(&pool, "test.happened", aggregate, 2).await;
    drain(&relay).await;
    let rows = wait_for_effects(&pool, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects(&pool).await, rows);
    assert_eq!(rows.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2], "the first event took effect once");
}

/// A group that resumes from an offset it committed between two records of one relay
/// round (a consumer restarted or rebalanced half way) gets every record after it, and
/// none before.
#[tokio::test]
async fn a_group_resuming_between_the_records_of_one_round_gets_every_later_one() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka(&broker).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    // One round: sixty aggregates, published together, about twenty to a partition.
    for n in 0..60 {
        emit_committed(&pool, "test.happened", Uuid::now_v7(), n).await;
    }
    assert_eq!(relay.publish_pending().await.unwrap(), 60);
    let records = read_topic(&broker.brokers(), TOPIC, 60, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 60);

    // The group committed the middle of the fullest partition, as a consumer that
    // applied half of it and stopped would have.
    let partition = (0..3).max_by_key(|p| records.iter().filter(|r| r.partition == *p).count()).unwrap();
    let mut offsets: Vec<i64> = records.iter().filter(|r| r.partition == partition).map(|r| r.offset).collect();
    offsets.sort_unstable();
    let resume_at = offsets[offsets.len() / 2];
    let group = format!("test-{}", Uuid::new_v4().simple());
    let committer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut position = TopicPartitionList::new();
    position.add_partition_offset(TOPIC, partition, Offset::Offset(resume_at)).unwrap();
    committer.commit(&position, CommitMode::Sync).unwrap();
    drop(committer);

    subscribe(&events, &pool, group).await;
    let expected: HashSet<Uuid> = records
        .iter()
        .filter(|r| r.partition != partition || r.offset >= resume_at)
        .map(|r| serde_json::from_slice::<Envelope>(&r.value).unwrap().id)
        .collect();
    let applied = applied_once(&pool, expected.len()).await;
    assert_eq!(applied, expected, "resumed at offset {resume_at} of partition {partition}");
}

#[tokio::test]
async fn with_batches_of_many_records_a_new_group_gets_every_record_once() {
    // What Compose and Kubernetes run against Apache Kafka (`KAFKA_BATCH_NUM_MESSAGES`).
    // A group that reads from the start never resumes inside a batch, so this broker
    // serves it correctly too.
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka_with(&broker, events::kafka::Options { instance_id: None, batch_records: 10_000 }).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    let mut emitted = HashSet::new();
    for n in 0..60 {
        emitted.insert(emit_committed(&pool, "test.happened", Uuid::now_v7(), n).await.id);
    }
    assert_eq!(relay.publish_pending().await.unwrap(), 60);

    subscribe(&events, &pool, format!("test-{}", Uuid::new_v4().simple())).await;
    assert_eq!(applied_once(&pool, 60).await, emitted);
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_the_next_record_is_still_processed() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka(&broker).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    let aggregate = Uuid::now_v7();

    // Not an envelope at all, then an envelope no handler can apply, then a good one;
    // all on one key, so they reach the consumer in this order.
    let events::Events::Kafka(client) = &events else { unreachable!() };
    client.publish(TOPIC, &aggregate.to_string(), b"{not json", rdkafka::message::OwnedHeaders::new()).await.unwrap();
    emit_committed(&pool, "test.poison", aggregate, 1).await;
    drain(&relay).await;
    let good = emit_committed(&pool, "test.happened", aggregate, 2).await;
    drain(&relay).await;

    subscribe(&events, &pool, format!("test-{}", Uuid::new_v4().simple())).await;
    let rows = wait_for_effects(&pool, 1).await;
    assert_eq!(rows, [(good.id, 2)]);

    let dead = read_topic(&broker.brokers(), &events::dead_letter_topic(TOPIC), 2, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].value, b"{not json");
    assert!(dead[0].headers["dlq-error"].starts_with("not an event envelope"), "{:?}", dead[0].headers);
    assert_eq!(dead[1].json()["type"], "test.poison");
    assert!(dead[1].headers["dlq-error"].contains("this event can never be applied"));
    assert_eq!(dead[1].headers["dlq-source-topic"], TOPIC);
    assert!(dead[1].headers.contains_key("traceparent"), "original headers are kept");
}

#[tokio::test]
async fn two_relays_on_one_outbox_publish_each_event_once_and_in_order() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka(&broker).await;
    let aggregates: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for n in 0..200 {
        emit_committed(&pool, "test.happened", aggregates[n % 20], n as i64).await;
    }
    let (a, b) = (Relay::new("test", pool.clone(), events.clone()), Relay::new("test", pool.clone(), events));
    let (published_a, published_b) = tokio::join!(
        async {
            let mut total = 0;
            while let n @ 1.. = a.publish_pending().await.unwrap() {
                total += n;
            }
            total
        },
        async {
            let mut total = 0;
            while let n @ 1.. = b.publish_pending().await.unwrap() {
                total += n;
            }
            total
        },
    );
    drain(&a).await;
    let records = read_topic(&broker.brokers(), TOPIC, 200, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 200, "published by the relays: {published_a} + {published_b}");
    let ids: HashSet<String> = records.iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 200, "no event twice");
    let mut last: HashMap<String, i64> = HashMap::new();
    for record in &records {
        let n = record.json()["data"]["n"].as_i64().unwrap();
        let previous = last.insert(record.key.clone().unwrap(), n);
        assert!(previous.is_none_or(|p| p < n), "in order per key");
    }
}

#[tokio::test]
async fn without_a_broker_events_reach_in_process_subscribers_once() {
    let (_db, pool) = schema().await;
    let events = Events::connect(None).unwrap();
    subscribe(&events, &pool, "test").await;
    let relay = Relay::new("test", pool.clone(), events);
    for n in 0..3 {
        emit_committed(&pool, "test.happened", Uuid::now_v7(), n).await;
    }
    emit_committed(&pool, "test.poison", Uuid::now_v7(), 9).await;
    drain(&relay).await;
    assert_eq!(effects(&pool).await.len(), 3);

    // A relay that died after handing the events over but before marking them: they
    // come again, and the inbox absorbs them.
    sqlx::query("UPDATE outbox SET published_at = NULL").execute(&pool).await.unwrap();
    drain(&relay).await;
    assert_eq!(effects(&pool).await.len(), 3);
}

#[tokio::test]
async fn metrics_show_the_backlog_publish_errors_and_consumer_lag() {
    let handle = common::telemetry::metrics_handle();
    let mut broker = TestBroker::reserve();
    let (_db, pool) = schema().await;
    let service = leak(format!("metrics{}", Uuid::new_v4().simple()));
    let events = Events::connect(Some(&broker.brokers())).unwrap();
    let relay = tokio::spawn(Relay::new(service, pool.clone(), events.clone()).run());
    let aggregate = Uuid::now_v7();
    for n in 0..5 {
        emit_committed(&pool, "test.happened", aggregate, n).await;
    }
    let metric = |text: &str, prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let backlog_line = format!("outbox_backlog{{service=\"{service}\"}}");
    let mut seen = None;
    for _ in 0..100 {
        seen = metric(&handle.render(), &backlog_line);
        if seen == Some(5.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(5.0), "the backlog gauge counts what is waiting");

    // Wait for one failed publish (the broker is away), then bring it back.
    let errors_line = format!("outbox_publish_errors_total{{service=\"{service}\",topic=\"{TOPIC}\"}}");
    for _ in 0..300 {
        if metric(&handle.render(), &errors_line).is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&handle.render(), &errors_line).is_some_and(|n| n >= 1.0), "publish errors are counted");
    broker.resume().await;
    events.ensure_topics(&[TOPIC.to_owned()]).await;

    let group = format!("lag{}", Uuid::new_v4().simple());
    subscribe(&events, &pool, group.clone()).await;
    wait_for_effects(&pool, 5).await;
    let lag_prefix = format!("kafka_consumer_lag{{group=\"{group}\",topic=\"{TOPIC}\"");
    let mut lag_seen = false;
    for _ in 0..150 {
        if handle.render().lines().any(|l| l.starts_with(&lag_prefix)) {
            lag_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.abort();
    assert!(lag_seen, "consumer lag is reported per topic and partition");
}

#[tokio::test]
async fn events_a_consumer_does_not_want_cost_no_transaction_and_leave_no_inbox_row() {
    let (_db, pool) = schema().await;
    let inbox = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox").fetch_one(&pool).await.unwrap() };
    let ignored = emit_committed(&pool, "test.ignored", Uuid::now_v7(), 1).await;
    let wanted = emit_committed(&pool, "test.happened", Uuid::now_v7(), 2).await;
    let apply = |event| events::apply_once(&pool, &RecordEffect, TOPIC, event);
    assert_eq!(apply(&ignored).await.unwrap(), events::Delivery::Ignored);
    assert_eq!(apply(&ignored).await.unwrap(), events::Delivery::Ignored, "again: still nothing to record");
    assert_eq!(inbox().await, 0);
    assert_eq!(apply(&wanted).await.unwrap(), events::Delivery::Applied);
    assert_eq!(apply(&wanted).await.unwrap(), events::Delivery::Duplicate);
    assert_eq!(inbox().await, 1);
    assert_eq!(effects(&pool).await, [(wanted.id, 2)]);
}

#[tokio::test]
async fn work_that_emits_wakes_the_relay_once_it_is_done_instead_of_waiting_for_its_poll() {
    let (_db, pool) = schema().await;
    let events = Events::connect(None).unwrap();
    subscribe(&events, &pool, "test").await;
    // A relay that, unwoken, would not look again for an hour.
    let relay = Relay::new("test", pool.clone(), events).with_idle_poll(Duration::from_secs(3600));
    let relay = tokio::spawn(relay.run());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Committed inside `waking` (as every request and every event's handling is): the
    // relay publishes it when the work is done.
    let event = events::waking(emit_committed(&pool, "test.happened", Uuid::now_v7(), 1)).await;
    assert_eq!(wait_for_effects(&pool, 1).await, [(event.id, 1)]);

    // Committed outside it (nothing wakes the relay): it waits for the relay's next look.
    emit_committed(&pool, "test.happened", Uuid::now_v7(), 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects(&pool).await.len(), 1, "the relay slept on: it was not woken");
    events::wake(TOPIC);
    wait_for_effects(&pool, 2).await;
    relay.abort();
}

#[tokio::test]
async fn inbox_rows_older_than_the_retention_are_pruned_in_batches_and_recent_ones_stay() {
    let (_db, pool) = schema().await;
    let retention = Duration::from_secs(14 * 24 * 3600);
    // More old rows than one batch deletes, some recent ones, and one applied just now.
    sqlx::query(
        "INSERT INTO inbox (event_id, topic, event_type, applied_at)
         SELECT gen_random_uuid(), 'test.events', 'test.happened', now() - interval '15 days' - n * interval '1 minute'
         FROM generate_series(1, 2500) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let recent: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (event_id, topic, event_type, applied_at)
         SELECT gen_random_uuid(), 'test.events', 'test.happened', now() - interval '13 days 23 hours'
         FROM generate_series(1, 3) RETURNING event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let now = Envelope {
        id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        occurred_at: chrono::Utc::now(),
        aggregate_id: Uuid::now_v7(),
        data: serde_json::json!({"n": 1}),
    };
    assert_eq!(events::apply_once(&pool, &RecordEffect, TOPIC, &now).await.unwrap(), events::Delivery::Applied);

    assert_eq!(events::prune_inbox(&pool, retention).await.unwrap(), 2500);
    let mut kept: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM inbox ORDER BY applied_at").fetch_all(&pool).await.unwrap();
    assert_eq!(kept.pop(), Some(now.id));
    let mut expected = recent.clone();
    expected.sort_unstable();
    kept.sort_unstable();
    assert_eq!(kept, expected, "the recent rows stay");
    // What is kept still makes a redelivery a no-op; pruning again finds nothing.
    assert_eq!(events::apply_once(&pool, &RecordEffect, TOPIC, &now).await.unwrap(), events::Delivery::Duplicate);
    assert_eq!(events::prune_inbox(&pool, retention).await.unwrap(), 0);
}

#[tokio::test]
async fn a_dead_letter_replayed_to_its_topic_is_applied_once_its_handler_is_fixed() {
    let broker = TestBroker::start().await;
    let (_db, pool) = schema().await;
    let events = kafka(&broker).await;
    let relay = Relay::new("test", pool.clone(), events.clone());
    let handler = Arc::new(Fixable::default());
    let subscription = Subscription {
        group: format!("test-{}", Uuid::new_v4().simple()),
        topics: vec![TOPIC.to_owned()],
        db: pool.clone(),
        handler: handler.clone(),
    };
    events.subscribe(subscription).await;
    let aggregate = Uuid::now_v7();
    let stuck = emit_committed(&pool, "test.fixable", aggregate, 1).await;
    drain(&relay).await;
    let dead = read_topic(&broker.brokers(), &events::dead_letter_topic(TOPIC), 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(effects(&pool).await.is_empty());

    // The fix is deployed; the operator replays the topic's dead letters.
    handler.fixed.store(true, Ordering::SeqCst);
    let events::Events::Kafka(client) = &events else { unreachable!() };
    assert_eq!(client.replay_dead_letters(TOPIC).await.unwrap(), 1);
    assert_eq!(wait_for_effects(&pool, 1).await, [(stuck.id, 1)], "the running consumer applied it");

    // Back on its topic as it first was: same key and value, its headers without the
    // dead letter's.
    let records = read_topic(&broker.brokers(), TOPIC, 2, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let (first, replayed) = (&records[0], &records[1]);
    assert_eq!((replayed.key.as_deref(), &replayed.value), (Some(aggregate.to_string().as_str()), &first.value));
    assert_eq!(replayed.headers, first.headers);
    assert!(dead[0].headers.keys().any(|k| k.starts_with("dlq-")));

    // The replay committed how far it got: the next one has nothing to send, and the
    // effect stays single.
    assert_eq!(client.replay_dead_letters(TOPIC).await.unwrap(), 0);
    assert_eq!(client.replay_dead_letters(&events::dead_letter_topic(TOPIC)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects(&pool).await.len(), 1);
}
