use std::time::Duration;

use common::testing::{TestBroker, read_topic};

use crate::helpers::TestApp;

#[tokio::test]
async fn each_registration_is_published_once_as_user_registered() {
    let broker = TestBroker::start().await;
    let app = TestApp::spawn_with(&[("KAFKA_BROKERS", &broker.brokers())]).await;
    let ready: serde_json::Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["kafka"], "up");

    let jane = app.customer("jane").await;
    let john = app.customer("john").await;
    assert_eq!(app.register("jane", "jane2@example.com").await.status(), 409, "a refused registration emits nothing");

    let records = read_topic(&broker.brokers(), "user.events", 2, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for user in [&jane.user, &john.user] {
        let id = user["id"].as_str().unwrap();
        let record = records.iter().find(|r| r.key.as_deref() == Some(id)).expect("keyed by the user id");
        let event = record.json();
        assert_eq!(event["type"], "user.registered");
        assert_eq!(event["aggregate_id"], id);
        assert_eq!(&event["data"], user, "the data is the public user, never a password hash");
        assert!(common::trace::parse(&record.headers["traceparent"]).is_some());
    }

    // A plain Kafka client (Python's confluent-kafka, through the shared tool) sees one
    // valid envelope per registration.
    let python = std::env::var("SHOP_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/tools/kafka-tail");
    let out = std::process::Command::new(&python)
        .args([tool, "user.events", "--brokers", &broker.brokers(), "--json", "--timeout", "5"])
        .output()
        .unwrap_or_else(|e| panic!("{python} {tool}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-tail failed (run the tests with ./scripts/test, which installs confluent-kafka): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("2 records, 0 invalid envelopes"), "{stdout}");
}
