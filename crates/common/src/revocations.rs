//! Revoked sessions, refused by every service through a cache outage and after the cache
//! restarts empty, with no database call per request.
//!
//! The durable record is the user service's (`users.revoked_sessions`): a logout, a
//! refresh-token family revoked for reuse, or a password change that ends the other
//! sessions writes a row in the same transaction. Every process keeps a copy in memory,
//! and an access token is checked against that copy first, then against a marker in
//! Redis for a session the copy does not have yet. The copy is kept current by
//! - the writer itself, which adds what it revoked before it answers;
//! - a marker in Redis, written before the writer answers and looked up by a process
//!   whose copy does not have the session yet, so that every replica refuses it at once
//!   (while Redis is up: through an outage, the copy is what refuses it);
//! - Redis pub/sub, over which the writer announces it to every other process;
//! - a full reload from the durable record (the user service's database in its own
//!   process, `GET /internal/revocations` in the others) at start-up, each time the
//!   subscription is made again, and every [`RELOAD_WHILE_DOWN`] while it is down, so
//!   that what was announced while a process could not hear it reaches it all the same.
//!
//! A session's revocation is kept until the last access token issued for it has expired
//! (`revoked at + access token TTL`), then forgotten.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::cache::{REDIS_TIMEOUT, subscribed};

/// How often a process that cannot hear announcements reloads the durable record.
pub const RELOAD_WHILE_DOWN: Duration = Duration::from_secs(2);
/// How long a reload may take before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// One revoked session: its access tokens are refused until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub session_id: Uuid,
    pub until: DateTime<Utc>,
}

/// `GET /internal/revocations`: every session revoked and not yet expired.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevokedList {
    pub items: Vec<Revoked>,
}

/// Where the durable record is read from.
pub trait Source: Send + Sync + 'static {
    fn load(&self) -> BoxFuture<'_, anyhow::Result<Vec<Revoked>>>;
}

/// This process's copy of the revoked sessions.
pub struct Revocations {
    sessions: RwLock<HashMap<Uuid, DateTime<Utc>>>,
    source: OnceLock<Arc<dyn Source>>,
    redis: Option<(ConnectionManager, redis::Client)>,
    channel: String,
    /// The prefix of the markers' keys.
    markers: String,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl Revocations {
    /// Announced over Redis when given; otherwise every service is in this process.
    pub fn new(redis: Option<(ConnectionManager, redis::Client)>, prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            sessions: RwLock::default(),
            source: OnceLock::new(),
            redis,
            channel: format!("{prefix}:revocations"),
            markers: format!("{prefix}:revoked-session:"),
        })
    }

    /// Whether the session's access tokens are refused: by this process's copy, or by a
    /// marker another process wrote a moment ago (an unreachable Redis answers no: the
    /// copy is what refuses tokens through an outage).
    pub async fn is_revoked(&self, session_id: Uuid) -> bool {
        if self.is_known_revoked(session_id) {
            return true;
        }
        let Some((conn, _)) = &self.redis else { return false };
        let mut conn = conn.clone();
        let key = format!("{}{session_id}", self.markers);
        let command = redis::cmd("PTTL").arg(&key).to_owned();
        match tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<i64>(&mut conn)).await {
            Ok(Ok(millis)) if millis > 0 => {
                let until = Utc::now() + chrono::Duration::milliseconds(millis);
                self.add(&[Revoked { session_id, until }]);
                true
            }
            _ => false,
        }
    }

    fn is_known_revoked(&self, session_id: Uuid) -> bool {
        let sessions = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.get(&session_id).is_some_and(|until| *until > Utc::now())
    }

    /// Takes sessions revoked (and committed) in this process: refused here at once, and
    /// announced to the other processes.
    pub async fn revoked(&self, revoked: &[Revoked]) {
        if revoked.is_empty() {
            return;
        }
        self.add(revoked);
        let Some((conn, _)) = &self.redis else { return };
        let mut pipe = redis::pipe();
        for r in revoked {
            let millis = (r.until - Utc::now()).num_milliseconds().max(1);
            pipe.cmd("SET").arg(format!("{}{}", self.markers, r.session_id)).arg(1).arg("PX").arg(millis).ignore();
        }
        let message = revoked.iter().map(|r| format!("{} {}", r.session_id, r.until.timestamp())).collect::<Vec<_>>();
        pipe.cmd("PUBLISH").arg(&self.channel).arg(message.join("\n")).ignore();
        // Markers and announcement in one round trip.
        let mut conn = conn.clone();
        if !matches!(tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut conn)).await, Ok(Ok(()))) {
            // The others reload the durable record while they cannot hear us.
            tracing::warn!("could not announce a revocation; other processes learn it from their next reload");
        }
    }

    /// Reads the durable record from `source` from now on, and keeps this copy in step with
    /// it. The first source given wins (in `shop`, the user service's database); the first
    /// load is awaited, so that a process serves nothing before it knows what was revoked
    /// (unless the record cannot be reached: then it serves, and keeps trying).
    pub async fn serve_from(self: &Arc<Self>, source: Arc<dyn Source>) {
        if self.source.set(source).is_err() {
            return;
        }
        if let Err(err) = self.reload().await {
            tracing::warn!(error = %err, "could not load the revoked sessions; retrying in the background");
        }
        tokio::spawn(self.clone().keep_in_step());
    }

    /// Whether a source was given (by the user service in this process).
    pub fn has_source(&self) -> bool {
        self.source.get().is_some()
    }

    fn add(&self, revoked: &[Revoked]) {
        let mut sessions = self.sessions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in revoked {
            let until = sessions.entry(r.session_id).or_insert(r.until);
            *until = (*until).max(r.until);
        }
    }

    /// Replaces nothing, adds everything: a reload never forgets a revocation announced
    /// meanwhile; expired ones are dropped.
    async fn reload(&self) -> anyhow::Result<()> {
        let source = self.source.get().ok_or_else(|| anyhow::anyhow!("no source of revocations"))?;
        let loaded = tokio::time::timeout(RELOAD_TIMEOUT, source.load())
            .await
            .map_err(|_| anyhow::anyhow!("loading the revoked sessions timed out"))??;
        self.add(&loaded);
        let now = Utc::now();
        let mut sessions = self.sessions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|_, until| *until > now);
        metrics::gauge!("revoked_sessions").set(sessions.len() as f64);
        Ok(())
    }

    /// Subscribed: applies announcements, reloading after each (re)subscription.
    /// Not subscribed (Redis down): reloads every [`RELOAD_WHILE_DOWN`].
    async fn keep_in_step(self: Arc<Self>) {
        let Some((_, client)) = self.redis.clone() else { return };
        let mut backoff = Backoff::new(Duration::from_millis(50), RELOAD_WHILE_DOWN);
        loop {
            let subscribed = tokio::time::timeout(Duration::from_secs(2), subscribed(&client, &self.channel)).await;
            match subscribed {
                Ok(Ok(mut pubsub)) => match self.reload().await {
                    Ok(()) => {
                        backoff.reset();
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(payload) = message.get_payload::<String>() else { continue };
                            self.add(&parse(&payload));
                        }
                        tracing::warn!("lost the revocation channel; reloading revoked sessions until it is back");
                    }
                    Err(err) => tracing::warn!(error = %err, "could not reload the revoked sessions"),
                },
                _ => {
                    if let Err(err) = self.reload().await {
                        tracing::warn!(error = %err, "could not reload the revoked sessions");
                    }
                    tokio::time::sleep(RELOAD_WHILE_DOWN).await;
                    continue;
                }
            }
            backoff.wait().await;
        }
    }
}

/// An announcement: a line `<session id> <until, Unix seconds>` per session.
fn parse(payload: &str) -> Vec<Revoked> {
    payload
        .lines()
        .filter_map(|line| {
            let (id, until) = line.split_once(' ')?;
            let until = DateTime::from_timestamp(until.parse().ok()?, 0)?;
            Some(Revoked { session_id: id.parse().ok()?, until })
        })
        .collect()
}

/// The record as the user service serves it to the others.
pub struct Remote(pub crate::client::Upstream);

impl Source for Remote {
    fn load(&self) -> BoxFuture<'_, anyhow::Result<Vec<Revoked>>> {
        Box::pin(async move {
            let answer = self.0.call::<()>(axum::http::Method::GET, "/internal/revocations", None, true).await?;
            anyhow::ensure!(answer.status.is_success(), "the user service answered {}", answer.status);
            Ok(serde_json::from_slice::<RevokedList>(&answer.body)?.items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Revoked>);
    impl Source for Fixed {
        fn load(&self) -> BoxFuture<'_, anyhow::Result<Vec<Revoked>>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    #[tokio::test]
    async fn a_session_is_refused_until_its_revocation_expires_and_the_record_is_loaded_at_start() {
        let live = Uuid::now_v7();
        let lapsed = Uuid::now_v7();
        let revocations = Revocations::new(None, "t");
        let soon = Utc::now() + chrono::Duration::minutes(5);
        let past = Utc::now() - chrono::Duration::seconds(1);
        revocations
            .serve_from(Arc::new(Fixed(vec![
                Revoked { session_id: live, until: soon },
                Revoked { session_id: lapsed, until: past },
            ])))
            .await;
        assert!(revocations.is_revoked(live).await);
        assert!(!revocations.is_revoked(lapsed).await);
        assert!(!revocations.is_revoked(Uuid::now_v7()).await);
        let later = Uuid::now_v7();
        revocations.revoked(&[Revoked { session_id: later, until: soon }]).await;
        assert!(revocations.is_revoked(later).await);
    }

    #[test]
    fn announcements_parse_and_skip_what_is_not_one() {
        let id = Uuid::now_v7();
        let parsed = parse(&format!("{id} 2000000000\nnonsense\n{id} x"));
        assert_eq!(parsed, [Revoked { session_id: id, until: DateTime::from_timestamp(2_000_000_000, 0).unwrap() }]);
    }
}
