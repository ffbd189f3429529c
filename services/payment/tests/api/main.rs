//! The payment service as its clients see it, with the real order and product services,
//! PostgreSQL and Redis, and events delivered between them.

mod helpers;
mod payments;
mod refunds;
