//! Live order status for WebSocket clients, whichever replica holds their socket.
//!
//! A status change is published once: to a Redis channel when Redis is configured (every
//! replica subscribes and hands what arrives to its own sockets), or straight to this
//! process's sockets otherwise (`shop` alone). Each socket has a bounded queue; a client
//! that falls that far behind is dropped rather than buffered without limit, and can
//! reconnect and re-read its orders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backoff::Backoff;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::StatusChanged;

/// Messages a socket may have waiting before its client counts as too slow.
pub const SOCKET_BUFFER: usize = 64;

/// One change for one user, as it travels through Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    user_id: Uuid,
    change: StatusChanged,
}

/// Each user's open sockets: their ids and queues.
type Sockets = HashMap<Uuid, Vec<(u64, mpsc::Sender<Arc<str>>)>>;

/// The sockets of this process, by user.
#[derive(Default)]
pub struct Hub {
    sockets: Mutex<Sockets>,
    next_id: AtomicU64,
}

/// A socket's place in the hub: its queue, and its id to leave with.
pub struct Registration {
    pub id: u64,
    pub user_id: Uuid,
    pub messages: mpsc::Receiver<Arc<str>>,
}

impl Hub {
    pub fn register(&self, user_id: Uuid) -> Registration {
        let (sender, messages) = mpsc::channel(SOCKET_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user_id).or_default().push((id, sender));
        metrics::gauge!("websocket_connections").increment(1.0);
        Registration { id, user_id, messages }
    }

    /// How many sockets `user_id` has open here.
    pub fn count(&self, user_id: Uuid) -> usize {
        self.lock().get(&user_id).map_or(0, Vec::len)
    }

    pub fn unregister(&self, registration: &Registration) {
        let mut sockets = self.lock();
        if let Some(list) = sockets.get_mut(&registration.user_id) {
            let before = list.len();
            list.retain(|(id, _)| *id != registration.id);
            if list.len() < before {
                metrics::gauge!("websocket_connections").decrement(1.0);
            }
            if list.is_empty() {
                sockets.remove(&registration.user_id);
            }
        }
    }

    /// Queues `message` on every socket of `user_id`. A socket whose queue is full is
    /// dropped from the hub: its task sees its queue end and closes it.
    pub fn deliver(&self, user_id: Uuid, message: Arc<str>) {
        let mut sockets = self.lock();
        let Some(list) = sockets.get_mut(&user_id) else { return };
        list.retain(|(_, sender)| match sender.try_send(message.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("websocket_slow_clients_dropped_total").increment(1);
                metrics::gauge!("websocket_connections").decrement(1.0);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::gauge!("websocket_connections").decrement(1.0);
                false
            }
        });
        if list.is_empty() {
            sockets.remove(&user_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where status changes are published and where sockets register.
#[derive(Clone)]
pub struct Live {
    hub: Arc<Hub>,
    redis: Option<Redis>,
}

#[derive(Clone)]
struct Redis {
    publisher: redis::aio::ConnectionManager,
    channel: Arc<str>,
}

impl Live {
    /// In-process only (`shop` without Redis).
    pub fn local() -> Self {
        Self { hub: Arc::default(), redis: None }
    }

    /// Through Redis: publishes to the deployment's channel and starts the subscriber
    /// that feeds this process's sockets (reconnecting when Redis comes back).
    pub fn redis(url: &SecretString, publisher: redis::aio::ConnectionManager, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret())?;
        let channel: Arc<str> = format!("{prefix}:order-status").into();
        let hub = Arc::new(Hub::default());
        tokio::spawn(subscribe(client, channel.clone(), hub.clone()));
        Ok(Self { hub, redis: Some(Redis { publisher, channel }) })
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Tells every socket of the order's owner, on every replica. Best effort: a change
    /// that cannot be published is logged (clients re-read orders when they reconnect).
    pub async fn publish(&self, user_id: Uuid, change: StatusChanged) {
        let envelope = Envelope { user_id, change };
        let Some(redis) = &self.redis else {
            self.hub.deliver(user_id, to_message(&envelope.change));
            return;
        };
        let Ok(payload) = serde_json::to_string(&envelope) else { return };
        let mut conn = redis.publisher.clone();
        let published: redis::RedisResult<i64> =
            redis::cmd("PUBLISH").arg(redis.channel.as_ref()).arg(payload).query_async(&mut conn).await;
        if let Err(err) = published {
            // Redis is away: at least this replica's sockets hear of it.
            tracing::warn!(error = %err, "could not publish an order status change; delivering locally");
            self.hub.deliver(user_id, to_message(&envelope.change));
        }
    }
}

fn to_message(change: &StatusChanged) -> Arc<str> {
    serde_json::to_string(change).unwrap_or_default().into()
}

/// Feeds the hub from the Redis channel for as long as the process runs.
async fn subscribe(client: redis::Client, channel: Arc<str>, hub: Arc<Hub>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(channel.as_ref()).await {
                Ok(()) => {
                    backoff.reset();
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Envelope>(&payload) {
                            Ok(envelope) => hub.deliver(envelope.user_id, to_message(&envelope.change)),
                            Err(err) => tracing::warn!(error = %err, "ignoring a malformed order status message"),
                        }
                    }
                    tracing::warn!("lost the order status subscription; reconnecting");
                }
                Err(err) => tracing::warn!(error = %err, "could not subscribe to order status changes"),
            },
            Err(err) => tracing::warn!(error = %err, "could not connect to Redis for order status changes"),
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_that_falls_behind_is_dropped_and_the_others_still_hear() {
        let hub = Hub::default();
        let user = Uuid::now_v7();
        let mut slow = hub.register(user);
        let mut fast = hub.register(user);
        for n in 0..SOCKET_BUFFER {
            hub.deliver(user, format!("{n}").into());
            assert_eq!(fast.messages.recv().await.as_deref(), Some(format!("{n}").as_str()));
        }
        // The slow socket's queue is full: one more message drops it, not the fast one.
        hub.deliver(user, "one too many".into());
        assert_eq!(fast.messages.recv().await.as_deref(), Some("one too many"));
        let mut drained = 0;
        while slow.messages.recv().await.is_some() {
            drained += 1;
        }
        assert_eq!(drained, SOCKET_BUFFER, "what was queued is still sent, then the queue ends");
        hub.deliver(user, "later".into());
        assert_eq!(fast.messages.recv().await.as_deref(), Some("later"));
        hub.unregister(&fast);
        assert!(hub.lock().is_empty());
    }

    #[tokio::test]
    async fn changes_reach_only_their_owners_sockets() {
        let hub = Hub::default();
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut a = hub.register(alice);
        let mut b = hub.register(bob);
        hub.deliver(alice, "for alice".into());
        assert_eq!(a.messages.recv().await.as_deref(), Some("for alice"));
        assert!(b.messages.try_recv().is_err());
    }
}
