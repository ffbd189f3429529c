//! Categories: added under a parent, listed whole.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Category, CategoryName};
use crate::error::{Error, on_constraint};

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn insert_category(
    db: impl PgExecutor<'_>,
    name: &CategoryName,
    parent_id: Option<Uuid>,
) -> Result<Category, Error> {
    sqlx::query_as!(
        Category,
        "INSERT INTO catalog.categories (id, name, parent_id) VALUES ($1, $2, $3)
         RETURNING id, name, parent_id, created_at",
        Uuid::now_v7(),
        name.as_str(),
        parent_id
    )
    .fetch_one(db)
    .await
    .map_err(on_constraint)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn categories(db: &PgPool) -> Result<Vec<Category>, Error> {
    Ok(sqlx::query_as!(
        Category,
        "SELECT id, name, parent_id, created_at FROM catalog.categories ORDER BY lower(name), id"
    )
    .fetch_all(db)
    .await?)
}
