//! The customer's cart, priced by the product service on every read; a change is kept only
//! once the product service has priced it.

use common::ApiError;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Cart, Line, OrderLine, Quantity};
use crate::error::Error;
use crate::repository;

/// The cart with the product service's current names and prices. Products that were
/// deleted since they were added leave the cart.
pub async fn view(state: &AppState, user_id: Uuid) -> Result<Cart, ApiError> {
    let lines = repository::cart(&state.db, user_id).await?;
    priced(state, user_id, lines).await
}

/// Puts `quantity` of a product in the cart. Written and read back in one statement, then
/// priced: a change the pricing refuses (a total past the largest amount, the product
/// service away) is undone, so that the cart stays as it was and readable; a product the
/// catalogue does not have leaves the cart as it is priced.
pub async fn put(state: &AppState, user_id: Uuid, product_id: Uuid, quantity: Quantity) -> Result<Cart, ApiError> {
    let change = repository::put_cart_item(&state.db, user_id, product_id, quantity.get()).await?;
    match priced(state, user_id, change.lines).await {
        Ok(cart) if cart.items.iter().any(|item| item.product_id == product_id) => Ok(cart),
        Ok(_) => Err(Error::UnknownProduct.into()),
        Err(refused) => {
            repository::undo_cart_item(&state.db, user_id, product_id, change.previous).await?;
            Err(refused)
        }
    }
}

/// Takes a product out of the cart (nothing if it was not there), and prices what is left.
pub async fn remove(state: &AppState, user_id: Uuid, product_id: Uuid) -> Result<Cart, ApiError> {
    repository::remove_cart_items(&state.db, user_id, &[product_id]).await?;
    view(state, user_id).await
}

/// The cart's `lines` priced by the product service, in one call for them all; a line
/// whose product the catalogue no longer has is dropped from the cart.
async fn priced(state: &AppState, user_id: Uuid, lines: Vec<Line>) -> Result<Cart, ApiError> {
    let ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    let products = state.products.products(&ids).await?;
    let mut items = Vec::with_capacity(lines.len());
    let mut gone = Vec::new();
    for (line, product) in lines.iter().zip(products) {
        match product {
            Some(p) => items.push(OrderLine::new(p.id, p.name, p.price, line.quantity).map_err(Error::from)?),
            None => gone.push(line.product_id),
        }
    }
    if !gone.is_empty() {
        repository::remove_cart_items(&state.db, user_id, &gone).await?;
    }
    Ok(Cart::new(items).map_err(Error::from)?)
}
