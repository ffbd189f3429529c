//! What every service shares, each mechanism written once:
//!
//! - [`config`]: typed configuration from the environment, validated at start-up;
//! - [`error`]: the problem+json error shape and its stable codes;
//! - [`extract`]: JSON, path, query and client-address extractors that answer bad input
//!   with that shape;
//! - [`request_id`]: `X-Request-Id`, echoed or generated, in every log line and error body;
//! - [`http`]: the operational endpoints, the middleware stack and graceful serving;
//! - [`service`]: the skeleton every service fills in (state, routes, workers), its
//!   background work stopped as one, and its binary's commands;
//! - [`browsers`]: CORS and response compression;
//! - [`finish`]: requests run to completion once started;
//! - [`idempotency`]: `Idempotency-Key` replay, recorded with the effect it replays;
//! - [`telemetry`]: logs and the Prometheus recorder;
//! - [`db`]: pools, one schema and role per service, migrations;
//! - [`cache`]: cache-aside storage in two levels, in the process and in Redis;
//! - [`conditional`]: `ETag`, `If-None-Match` and `Cache-Control` of catalogue reads;
//! - [`client`]: calls to other services, with timeouts, retries and circuit breakers;
//! - [`money`]: amounts as decimal strings;
//! - [`page`]: `limit` and id cursors of lists;
//! - [`ratelimit`]: limits shared across replicas through Redis;
//! - [`auth`]: access tokens, auth extractors, password hashing;
//! - [`revocations`]: revoked sessions, refused by every process through a cache outage;
//! - [`contracts`]: the topics, event types, payloads, order statuses and the order to pay
//!   that services share;
//! - [`events`]: the transactional outbox, its relay, Kafka or in-process delivery, and
//!   consumers that apply each event once;
//! - [`trace`]: the W3C `traceparent` carried from requests into events;
//! - `testing` (feature `testing`): fresh databases, spawned servers and services started
//!   in process for tests.

pub mod auth;
pub mod backoff;
pub mod browsers;
pub mod cache;
pub mod client;
pub mod conditional;
pub mod config;
pub mod contracts;
pub mod db;
pub mod error;
pub mod events;
pub mod extract;
pub mod finish;
pub mod http;
pub mod idempotency;
pub mod money;
pub mod page;
pub mod ratelimit;
pub mod request_id;
pub mod revocations;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use error::{ApiError, ErrorCode, FieldErrors};
