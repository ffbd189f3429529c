//! Events without a broker (`shop` with no `KAFKA_BROKERS`): the relay hands each
//! outbox row straight to the subscribers of its topic in the same process. The outbox,
//! the inbox and the retry rules are the same as with Kafka; a record whose handler keeps
//! failing is logged and counted as dead-lettered, since there is no topic to park it on.

use std::collections::HashMap;
use std::sync::RwLock;

use super::relay::OutboxRow;
use super::{Delivery, Envelope, Subscription};
use crate::trace;

/// The in-process subscribers, by topic.
#[derive(Default)]
pub struct Bus {
    subscribers: RwLock<HashMap<String, Vec<Subscription>>>,
}

impl Bus {
    pub fn subscribe(&self, subscription: Subscription) {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|e| e.into_inner());
        for topic in &subscription.topics {
            subscribers.entry(topic.clone()).or_default().push(subscription.clone());
        }
    }

    /// Delivers a relay's batch to the subscribers of its topics, each subscriber's share
    /// in one transaction ([`Subscription::deliver_batch`]). What became of each row, in
    /// order: an error (a subscriber's database is away) leaves the rows of its topic
    /// unpublished, so they come again; subscribers that already applied them find them in
    /// their inbox.
    pub(super) async fn publish_all(&self, service: &'static str, rows: &[OutboxRow]) -> Vec<anyhow::Result<()>> {
        let mut outcomes: Vec<anyhow::Result<()>> = Vec::with_capacity(rows.len());
        let mut events: Vec<Option<(Envelope, Option<String>)>> = Vec::with_capacity(rows.len());
        for row in rows {
            // The publishing span's context, as Kafka's header would carry it.
            let span = super::publish_span(service, row);
            let traceparent = trace::instrument(span, Some(&row.traceparent), async { trace::outgoing() }).await;
            match serde_json::from_value::<Envelope>(row.envelope.clone()) {
                Ok(envelope) => {
                    events.push(Some((envelope, Some(traceparent))));
                    outcomes.push(Ok(()));
                }
                Err(err) => {
                    events.push(None);
                    outcomes.push(Err(err.into()));
                }
            }
        }
        let mut topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let subscribers =
                self.subscribers.read().unwrap_or_else(|e| e.into_inner()).get(topic).cloned().unwrap_or_default();
            let of_topic: Vec<usize> =
                (0..rows.len()).filter(|&i| rows[i].topic == topic && events[i].is_some()).collect();
            if subscribers.is_empty() || of_topic.is_empty() {
                continue;
            }
            let batch: Vec<(Envelope, Option<String>)> = of_topic.iter().filter_map(|&i| events[i].clone()).collect();
            for subscriber in subscribers {
                match subscriber.deliver_batch(topic, &batch).await {
                    Ok(deliveries) => {
                        for (delivery, (event, _)) in deliveries.iter().zip(&batch) {
                            if let Delivery::DeadLettered(reason) = delivery {
                                tracing::error!(topic, event_id = %event.id, group = %subscriber.group, reason, "in-process event dead-lettered");
                            }
                        }
                    }
                    Err(err) => {
                        let reason = format!("{err:#}");
                        for &i in &of_topic {
                            if outcomes[i].is_ok() {
                                outcomes[i] = Err(anyhow::anyhow!("{reason}"));
                            }
                        }
                    }
                }
            }
        }
        outcomes
    }
}
