//! The user service's business steps, between the handlers and the repository: each
//! runs its transaction and says what happened.
//!
//! - [`sessions`]: logging in, refreshing and logging out (refresh-token families);
//! - [`accounts`]: registering, profiles through the cache, profile changes.
pub mod accounts;
pub mod sessions;
