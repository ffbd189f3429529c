//! The rest of delivery: in-process subscribers (no broker), the metrics of the backlog and
//! of lag, events a consumer ignores, relay wake-ups, inbox pruning and dead-letter replay.

use super::*;

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
    let Rig { broker, db: _db, pool, events, relay } = rig().await;
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
