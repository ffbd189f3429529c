//! The order service's business steps, between the handlers and the repository.
//!
//! - [`checkout`]: placing an order, the first step of the saga, safe against crashes;
//! - [`cart`]: changing a cart, priced by the product service before it is kept;
//! - [`orders`]: moving an order on a customer's or an admin's request.
pub mod cart;
pub mod checkout;
pub mod orders;
