//! Carts: one row per line, replaced whole or by line.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Line, MAX_LINES};
use crate::error::Error;

/// The cart's lines, oldest first.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn cart(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<Vec<Line>, Error> {
    Ok(sqlx::query_as!(
        Line,
        "SELECT product_id, quantity FROM ordering.cart_items WHERE user_id = $1 ORDER BY added_at, product_id",
        user_id
    )
    .fetch_all(db)
    .await?)
}

/// Sets a product's quantity in the cart, adding the line if needed, unless that would
/// make more than [`MAX_LINES`] lines.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn put_cart_item(db: &PgPool, user_id: Uuid, product_id: Uuid, quantity: i32) -> Result<(), Error> {
    let written = sqlx::query!(
        "INSERT INTO ordering.cart_items (user_id, product_id, quantity)
         SELECT $1, $2, $3
         WHERE (SELECT count(*) FROM ordering.cart_items WHERE user_id = $1) < $4
            OR EXISTS (SELECT 1 FROM ordering.cart_items WHERE user_id = $1 AND product_id = $2)
         ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
        user_id,
        product_id,
        quantity,
        MAX_LINES as i64
    )
    .execute(db)
    .await?
    .rows_affected();
    if written == 0 {
        return Err(Error::CartFull(MAX_LINES));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn remove_cart_items(db: impl PgExecutor<'_>, user_id: Uuid, product_ids: &[Uuid]) -> Result<(), Error> {
    sqlx::query!("DELETE FROM ordering.cart_items WHERE user_id = $1 AND product_id = ANY($2)", user_id, product_ids)
        .execute(db)
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn clear_cart(db: &PgPool, user_id: Uuid) -> Result<(), Error> {
    sqlx::query!("DELETE FROM ordering.cart_items WHERE user_id = $1", user_id).execute(db).await?;
    Ok(())
}
