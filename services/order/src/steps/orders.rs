//! Moving an order through the status machine on a customer's or an admin's request.

use common::ApiError;
use common::auth::AuthUser;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Action, Order, StatusChanged};
use crate::error::Error;
use crate::repository::{self, Cause};

/// An order the caller may see: their own, or any for an admin. Anyone else's is a 404,
/// so ids reveal nothing.
pub async fn visible(state: &AppState, user: &AuthUser, id: Uuid) -> Result<Order, ApiError> {
    let order = repository::find_order(&state.db, id).await?;
    Ok(order.filter(|o| user.is_admin() || o.user_id == user.id).ok_or(Error::NotFound)?)
}

/// Moves a visible order by `action` and tells its owner's sockets.
pub async fn change(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
    action: Action,
    reason: &str,
) -> Result<Order, ApiError> {
    let order = visible(state, user, id).await?;
    let mut tx = state.db.begin().await?;
    let moved =
        repository::move_order(&mut tx, &order, action, Cause { reason: Some(reason), payment_id: None }).await?;
    tx.commit().await?;
    state.live.publish(moved.user_id, StatusChanged::of(&moved)).await;
    Ok(moved)
}
