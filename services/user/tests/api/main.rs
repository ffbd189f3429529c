//! The user service as its clients see it, over HTTP, against real PostgreSQL and Redis.

mod events;
mod helpers;
mod login;
mod platform;
mod profile;
mod register;
mod tokens;
