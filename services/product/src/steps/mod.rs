//! The product service's business steps, between the handlers and the repository.
//!
//! - [`cache`]: cache-aside reads of products and listing pages that a write never leaves
//!   stale;
//! - [`catalog`]: catalogue writes, each committed with its event, then told to the cache.
pub mod cache;
pub mod catalog;
