//! The product service as its clients see it, over HTTP, against real PostgreSQL, Redis
//! and (where events are involved) a real broker.

mod browsers;
mod cache;
mod catalogue;
mod events;
mod helpers;
mod listing;
mod plans;
mod reservations;
