//! Kafka through rdkafka: an idempotent `acks=all` producer for the relays, topic
//! creation (the local broker does not create topics on its own), consumers that commit a
//! record's offset only after its effect has committed, and the replay of dead letters
//! (`<binary> dlq replay <topic>`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
pub use rdkafka::message::OwnedHeaders;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::relay::OutboxRow;
use super::{Delivery, Envelope, Subscription, dead_letter_topic};
use crate::trace;

/// Partitions of each topic: records of one aggregate share a partition (the key is the
/// aggregate id), different aggregates spread over them.
const PARTITIONS: i32 = 3;
/// How long a publish may take, broker retries included, before the relay backs off.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer waits before polling again after a broker error.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_secs(1);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The header that carries why a record was dead-lettered.
pub const ERROR_HEADER: &str = "dlq-error";
/// The header that names the topic a dead letter came from (the others: `dlq-error`,
/// `dlq-source-partition`, `dlq-source-offset`); every `dlq-` header is dropped on replay.
pub const SOURCE_TOPIC_HEADER: &str = "dlq-source-topic";
/// How long a replay waits for the broker's metadata, offsets or the next record.
const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// The process's connection to Kafka.
pub struct Kafka {
    brokers: String,
    /// Static group membership (`group.instance.id`): a replica that restarts under the
    /// same id takes its partitions back instead of waiting for its old self to be
    /// evicted (which some brokers, tansu among them, never do).
    instance_id: Option<String>,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

/// Records per produce batch unless configured otherwise: one, which every broker serves
/// correctly (see `Kafka::with_options`).
pub const DEFAULT_BATCH_RECORDS: u32 = 1;

/// How a process uses Kafka, beyond where the brokers are.
#[derive(Debug, Clone)]
pub struct Options {
    /// Static group membership for the consumers (`group.instance.id`).
    pub instance_id: Option<String>,
    /// The most records the producer puts in one batch (`batch.num.messages`).
    pub batch_records: u32,
}

impl Default for Options {
    /// Dynamic membership, and one record per batch, which every broker serves correctly.
    fn default() -> Self {
        Self { instance_id: None, batch_records: DEFAULT_BATCH_RECORDS }
    }
}

impl Kafka {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        Self::with_options(brokers, Options::default())
    }

    pub fn with_options(brokers: &str, options: Options) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", PUBLISH_TIMEOUT.as_millis().to_string())
            .set("linger.ms", "2")
            // One record per batch unless configured otherwise. The local broker (tansu's
            // memory engine) answers a fetch from an offset inside a batch with the batches
            // after it, so a consumer that resumes from a committed offset in the middle of
            // a batch (after a restart or a rebalance) would never see the rest of that
            // batch. The cost is one record per partition in each produce request (five in
            // flight), ample for relays that publish hundreds of events a second; Apache
            // Kafka returns the whole batch and the client skips what it has seen, so
            // deployments on it raise the limit (`KAFKA_BATCH_NUM_MESSAGES`).
            .set("batch.num.messages", options.batch_records.to_string())
            // A missing topic fails fast (the relay then creates it) instead of holding
            // records for librdkafka's default 30 s.
            .set("topic.metadata.propagation.max.ms", "1000")
            .create()?;
        let admin = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
        Ok(Self { brokers: brokers.to_owned(), instance_id: options.instance_id, producer, admin })
    }

    /// Whether a broker answers a metadata request within `timeout` (readiness).
    pub async fn ping(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Creates the topics that do not exist yet.
    pub async fn ensure_topics(&self, names: &[String]) -> anyhow::Result<()> {
        let topics: Vec<NewTopic<'_>> =
            names.iter().map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1))).collect();
        let timeout = Some(Duration::from_secs(5));
        let options = AdminOptions::new().operation_timeout(timeout).request_timeout(timeout);
        for result in self.admin.create_topics(&topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
            }
        }
        Ok(())
    }

    /// Publishes one record and waits until the broker has it.
    pub async fn publish(&self, topic: &str, key: &str, payload: &[u8], headers: OwnedHeaders) -> anyhow::Result<()> {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        self.producer.send(record, PUBLISH_TIMEOUT).await.map_err(|(err, _)| anyhow::Error::new(err))?;
        Ok(())
    }

    pub(super) async fn publish_row(&self, row: &OutboxRow) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(&row.envelope)?;
        let event_type = row.envelope.get("type").and_then(|t| t.as_str()).unwrap_or_default();
        // The publishing span's context, the parent of every consumer's span.
        let traceparent = trace::outgoing();
        let headers = OwnedHeaders::new()
            .insert(Header { key: trace::TRACEPARENT.as_str(), value: Some(&traceparent) })
            .insert(Header { key: "event-type", value: Some(event_type) });
        self.publish(&row.topic, &row.aggregate_id.to_string(), &payload, headers).await
    }

    /// A consumer in `group`, reading from the earliest offset the group has not
    /// committed, committing only when told to.
    pub fn consumer(&self, group: &str) -> anyhow::Result<StreamConsumer<LagContext>> {
        let mut config = ClientConfig::new();
        if let Some(id) = &self.instance_id {
            config.set("group.instance.id", id);
        }
        Ok(config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // The local broker mishandles `latest` and `read_committed` (and there are no
            // transactions to wait for anyway).
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted")
            .set("statistics.interval.ms", "5000")
            // A replica that dies (kill -9, OOM) stops holding its partitions after 10 s
            // rather than librdkafka's default 45 s. (Shorter ones made tansu's static
            // members fail to rejoin at all.)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(LagContext { group: group.to_owned() })?)
    }
}

/// Reports each assigned partition's lag (records not yet consumed) as a gauge, from
/// librdkafka's periodic statistics.
pub struct LagContext {
    group: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "kafka_consumer_lag",
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    message.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Consumes the subscription's topics until the process ends: each record is delivered
/// (applied once, retried, dead-lettered if its handler keeps failing) and only then is
/// its offset committed, so a crash in between redelivers it and the inbox absorbs it.
pub async fn consume(kafka: Arc<Kafka>, subscription: Subscription) {
    let consumer = loop {
        match kafka.consumer(&subscription.group) {
            Ok(consumer) => break consumer,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "could not create a Kafka consumer; retrying");
                tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
            }
        }
    };
    let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
    if let Err(err) = consumer.subscribe(&topics) {
        tracing::error!(error = %err, "could not subscribe; this consumer stops");
        return;
    }
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, group = %subscription.group, "Kafka consumer error");
                tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                continue;
            }
        };
        handle_record(&kafka, &subscription, &message).await;
        // Commit failures are retried by the next commit; at worst the record comes again
        // and the inbox makes it a no-op.
        if let Err(err) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %err, "could not commit a consumer offset");
        }
    }
}

async fn handle_record(kafka: &Kafka, subscription: &Subscription, message: &BorrowedMessage<'_>) {
    let topic = message.topic();
    let parsed = message
        .payload()
        .ok_or_else(|| "the record has no value".to_owned())
        .and_then(|bytes| serde_json::from_slice::<Envelope>(bytes).map_err(|e| format!("not an event envelope: {e}")));
    let envelope = match parsed {
        Ok(envelope) => envelope,
        Err(reason) => {
            metrics::counter!("events_dead_lettered_total", "topic" => topic.to_owned()).increment(1);
            dead_letter(kafka, message, &reason).await;
            return;
        }
    };
    let traceparent = header(message, trace::TRACEPARENT.as_str()).map(str::to_owned);
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), MAX_RETRY_PAUSE);
    loop {
        match subscription.deliver(topic, &envelope, traceparent.clone()).await {
            Ok(Delivery::Applied | Delivery::Duplicate | Delivery::Ignored) => return,
            Ok(Delivery::DeadLettered(reason)) => return dead_letter(kafka, message, &reason).await,
            Err(err) => {
                // The database is away: the record cannot be applied, and moving on would
                // lose it. Wait for the database instead.
                tracing::warn!(error = format!("{err:#}"), "cannot apply events while the database is unavailable");
                backoff.wait().await;
            }
        }
    }
}

/// Parks a record on `<topic>.dlq` with the reason in a header, retrying until the broker
/// has it, so the consumer can move on without losing it.
async fn dead_letter(kafka: &Kafka, message: &BorrowedMessage<'_>, reason: &str) {
    let topic = dead_letter_topic(message.topic());
    let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
    let payload = message.payload().unwrap_or_default();
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), MAX_RETRY_PAUSE);
    loop {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let headers = headers
            .insert(Header { key: ERROR_HEADER, value: Some(reason) })
            .insert(Header { key: SOURCE_TOPIC_HEADER, value: Some(message.topic()) })
            .insert(Header { key: "dlq-source-partition", value: Some(&partition) })
            .insert(Header { key: "dlq-source-offset", value: Some(&offset) });
        match kafka.publish(&topic, &key, payload, headers).await {
            Ok(()) => {
                tracing::error!(
                    topic = message.topic(),
                    offset = message.offset(),
                    reason,
                    "record parked on the dead-letter topic"
                );
                return;
            }
            Err(err) => {
                if matches!(err.downcast_ref::<KafkaError>(), Some(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition))
                {
                    let _ = kafka.ensure_topics(std::slice::from_ref(&topic)).await;
                }
                tracing::warn!(error = format!("{err:#}"), "could not dead-letter a record yet; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// The dead-letter topic `dlq replay` reads for `topic`: `<topic>.dlq`, or `topic` itself
/// when it names one already.
pub fn dead_letters_of(topic: &str) -> String {
    if topic.ends_with(".dlq") { topic.to_owned() } else { dead_letter_topic(topic) }
}

/// The consumer group whose committed offsets say how much of a dead-letter topic has
/// been replayed, so that a second replay does not send the same records again.
pub fn replay_group(dead_letters: &str) -> String {
    format!("dlq-replay.{dead_letters}")
}

impl Kafka {
    /// Republishes the records of `topic`'s dead letters (`<topic>.dlq`) that no earlier
    /// replay sent, up to the end the topic has when the replay starts (a record that fails
    /// again is dead-lettered again, and waits for the next replay rather than looping),
    /// each to the topic it came from, with its key, value and headers but the `dlq-` ones;
    /// then commits how far it got. Returns how many it republished.
    ///
    /// A replayed event the consumer had applied after all (one that was dead-lettered,
    /// then redelivered) is absorbed by its inbox like any redelivery.
    pub async fn replay_dead_letters(&self, topic: &str) -> anyhow::Result<usize> {
        let dead_letters = dead_letters_of(topic);
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", replay_group(&dead_letters))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted")
            .create()?;
        // Where each partition ends now, and where the last replay stopped (or, with none,
        // the oldest record the broker still has).
        let metadata = consumer.fetch_metadata(Some(&dead_letters), REPLAY_WAIT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == dead_letters && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Ok(0); // no dead letters were ever parked there
        }
        let mut all = TopicPartitionList::new();
        for partition in &partitions {
            all.add_partition(&dead_letters, *partition);
        }
        let committed = consumer.committed_offsets(all, REPLAY_WAIT)?;
        let mut assignment = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&dead_letters, partition, REPLAY_WAIT)?;
            let done = match committed.find_partition(&dead_letters, partition).map(|p| p.offset()) {
                Some(Offset::Offset(done)) => done.max(low),
                _ => low,
            };
            if done < high {
                assignment.add_partition_offset(&dead_letters, partition, Offset::Offset(done))?;
                ends.insert(partition, high);
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&assignment)?;
        let mut replayed = 0;
        let mut reached: HashMap<i32, i64> = HashMap::new();
        while reached.len() < ends.len() || reached.iter().any(|(p, next)| *next < ends[p]) {
            let message = tokio::time::timeout(REPLAY_WAIT, consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no record of {dead_letters} arrived in {REPLAY_WAIT:?}"))??;
            let (partition, offset) = (message.partition(), message.offset());
            let Some(end) = ends.get(&partition).copied() else { continue };
            if offset >= end {
                // Dead-lettered since the replay started: left for the next one.
                reached.insert(partition, end);
                continue;
            }
            let source = header(&message, SOURCE_TOPIC_HEADER)
                .map(str::to_owned)
                .unwrap_or_else(|| dead_letters.trim_end_matches(".dlq").to_owned());
            let mut headers = OwnedHeaders::new();
            for h in message.headers().into_iter().flat_map(|hs| hs.iter()) {
                if !h.key.starts_with("dlq-") {
                    headers = headers.insert(Header { key: h.key, value: h.value });
                }
            }
            let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            self.publish(&source, &key, message.payload().unwrap_or_default(), headers).await?;
            replayed += 1;
            reached.insert(partition, offset + 1);
        }
        let mut position = TopicPartitionList::new();
        for (partition, next) in reached {
            position.add_partition_offset(&dead_letters, partition, Offset::Offset(next))?;
        }
        consumer.commit(&position, CommitMode::Sync)?;
        Ok(replayed)
    }
}

/// `<binary> dlq replay <topic>`: the same in every binary (and `shop`), with the brokers
/// of `KAFKA_BROKERS`; prints how many records it put back.
pub async fn replay_command(config: &crate::config::CommonConfig, topic: &str) -> anyhow::Result<()> {
    let Some(brokers) = config.kafka_brokers.as_deref() else {
        anyhow::bail!("dlq replay needs KAFKA_BROKERS: without a broker, nothing is dead-lettered on a topic");
    };
    let kafka = Kafka::with_options(brokers, Options { instance_id: None, batch_records: config.kafka_batch_records })?;
    let replayed = kafka.replay_dead_letters(topic).await?;
    println!("replayed {replayed} dead letters of {}", dead_letters_of(topic));
    Ok(())
}
