//! The order service as its clients see it, over HTTP and WebSocket, with the real product
//! service, PostgreSQL and Redis.

mod cart;
mod checkout;
mod helpers;
mod lifecycle;
mod live;
mod resilience;
