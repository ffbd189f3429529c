//! Events without a broker (`shop` with no `KAFKA_BROKERS`): the relay hands each
//! outbox row straight to the subscribers of its topic in the same process. The outbox,
//! the inbox and the retry rules are the same as with Kafka; a record whose handler keeps
//! failing is logged and counted as dead-lettered, since there is no topic to park it on.

use std::collections::HashMap;
use std::sync::RwLock;

use super::relay::OutboxRow;
use super::{Delivery, Envelope, Subscription, deliver};
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

    /// Delivers one row to every subscriber of its topic. An error (a subscriber's
    /// database is away) leaves the row unpublished, so it comes again; subscribers that
    /// already applied it find it in their inbox.
    pub(super) async fn publish(&self, row: &OutboxRow) -> anyhow::Result<()> {
        let subscribers =
            self.subscribers.read().unwrap_or_else(|e| e.into_inner()).get(&row.topic).cloned().unwrap_or_default();
        if subscribers.is_empty() {
            return Ok(());
        }
        let envelope: Envelope = serde_json::from_value(row.envelope.clone())?;
        for subscriber in subscribers {
            let delivery = deliver(
                &subscriber.db,
                &subscriber.group,
                subscriber.handler.as_ref(),
                &row.topic,
                &envelope,
                // The publishing span's context, as Kafka's header would carry it.
                Some(trace::outgoing()),
            )
            .await?;
            if let Delivery::DeadLettered(reason) = delivery {
                tracing::error!(topic = %row.topic, event_id = %envelope.id, group = %subscriber.group, reason, "in-process event dead-lettered");
            }
        }
        Ok(())
    }
}
