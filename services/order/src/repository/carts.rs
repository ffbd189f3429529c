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

/// A cart after a change of one line, and what that line was before.
#[derive(Debug)]
pub struct CartChange {
    /// Every line, oldest first.
    pub lines: Vec<Line>,
    /// The changed product's quantity before (`None`: the line is new), to undo it.
    pub previous: Option<i32>,
}

/// Sets a product's quantity in the cart, adding the line if needed, unless that would
/// make more than [`MAX_LINES`] lines, and reads the cart back, in one statement.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn put_cart_item(db: &PgPool, user_id: Uuid, product_id: Uuid, quantity: i32) -> Result<CartChange, Error> {
    let rows = sqlx::query!(
        r#"WITH existing AS (
               SELECT product_id, quantity, added_at FROM ordering.cart_items WHERE user_id = $1),
           written AS (
               INSERT INTO ordering.cart_items (user_id, product_id, quantity)
               SELECT $1, $2, $3
               WHERE (SELECT count(*) FROM existing) < $4 OR EXISTS (SELECT 1 FROM existing WHERE product_id = $2)
               ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity
               RETURNING product_id, quantity, added_at)
           SELECT l.product_id AS "product_id!", l.quantity AS "quantity!",
                  (SELECT quantity FROM existing WHERE product_id = $2) AS previous,
                  EXISTS (SELECT 1 FROM written) AS "written!"
           FROM (SELECT product_id, quantity, added_at FROM written
                 UNION ALL
                 SELECT product_id, quantity, added_at FROM existing WHERE product_id <> $2) AS l
           ORDER BY l.added_at, l.product_id"#,
        user_id,
        product_id,
        quantity,
        MAX_LINES as i64
    )
    .fetch_all(db)
    .await?;
    if !rows.first().is_some_and(|row| row.written) {
        return Err(Error::CartFull(MAX_LINES));
    }
    let previous = rows[0].previous;
    let lines = rows.into_iter().map(|row| Line { product_id: row.product_id, quantity: row.quantity }).collect();
    Ok(CartChange { lines, previous })
}

/// Puts a line back as it was before a change ([`CartChange::previous`]).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn undo_cart_item(db: &PgPool, user_id: Uuid, product_id: Uuid, previous: Option<i32>) -> Result<(), Error> {
    match previous {
        Some(quantity) => {
            sqlx::query!(
                "UPDATE ordering.cart_items SET quantity = $3 WHERE user_id = $1 AND product_id = $2",
                user_id,
                product_id,
                quantity
            )
            .execute(db)
            .await?
        }
        None => {
            sqlx::query!("DELETE FROM ordering.cart_items WHERE user_id = $1 AND product_id = $2", user_id, product_id)
                .execute(db)
                .await?
        }
    };
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
