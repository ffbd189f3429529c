//! Through a real Kafka-protocol broker: publication once and in order, redelivery, group
//! resumption, batches, dead letters, and two relays on one outbox.

use super::*;

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
    let Rig { broker: _broker, db: _db, pool, events, relay } = rig().await;
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
    let Rig { broker, db: _db, pool, events, relay } = rig().await;
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
    let Rig { broker, db: _db, pool, events, relay } = rig().await;
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
