//! The payment service's business steps, between the handlers and the repository.
//!
//! - [`charge`]: paying an order, safe against timeouts and crashes;
//! - [`refunds`]: refunding a payment on an admin's request, once per key.
pub mod charge;
pub mod refunds;
