//! Listing and search: the query built for each combination of filters, so each gets a
//! plan that uses its index (`docs/product-query-plans.md`).

use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::*;
use crate::domain::{Cursor, Listing, Page, Product, Sort};
use crate::error::Error;

/// The SQL of one listing page, after `prefix` (`EXPLAIN …` in the plan tests).
pub fn list_query<'a>(listing: &'a Listing, prefix: &str) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(prefix);
    query.push("SELECT ");
    query.push(PRODUCT_COLUMNS);
    match &listing.q {
        Some(q) => {
            query.push(", ts_rank(search, websearch_to_tsquery('english', ");
            query.push_bind(q.clone());
            query.push(")) AS rank FROM catalog.products WHERE deleted_at IS NULL AND search @@ websearch_to_tsquery('english', ");
            query.push_bind(q.clone());
            query.push(")");
        }
        None => {
            query.push(", NULL::real AS rank FROM catalog.products WHERE deleted_at IS NULL");
        }
    }
    if let Some(category_id) = listing.category_id {
        query.push(" AND category_id = ").push_bind(category_id);
    }
    if let Some(min) = listing.min_price {
        query.push(" AND price >= ").push_bind(min);
    }
    if let Some(max) = listing.max_price {
        query.push(" AND price <= ").push_bind(max);
    }
    if listing.in_stock {
        query.push(" AND stock > 0");
    }
    match (&listing.cursor, listing.sort) {
        (Some(Cursor::Newest { created_at, id }), Sort::Newest) => {
            query.push(" AND (created_at, id) < (").push_bind(*created_at).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Price { price, id }), Sort::PriceAsc) => {
            query.push(" AND (price, id) > (").push_bind(*price).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Price { price, id }), Sort::PriceDesc) => {
            query.push(" AND (price, id) < (").push_bind(*price).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Relevance { rank, id }), Sort::Relevance) => {
            let q = listing.q.clone().unwrap_or_default();
            query.push(" AND (ts_rank(search, websearch_to_tsquery('english', ").push_bind(q);
            query.push(")), id) < (").push_bind(*rank).push("::real, ").push_bind(*id).push(")");
        }
        _ => {}
    }
    query.push(match listing.sort {
        Sort::Relevance => " ORDER BY rank DESC, id DESC",
        Sort::Newest => " ORDER BY created_at DESC, id DESC",
        Sort::PriceAsc => " ORDER BY price ASC, id ASC",
        Sort::PriceDesc => " ORDER BY price DESC, id DESC",
    });
    query.push(" LIMIT ").push_bind(listing.limit + 1);
    query
}

/// One page of live products in the listing's order, after its cursor.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn list(db: &PgPool, listing: &Listing) -> Result<Page<Product>, Error> {
    let mut query = list_query(listing, "");
    let mut rows: Vec<ListedRow> = query.build_query_as().fetch_all(db).await?;
    let more = rows.len() as i64 > listing.limit;
    rows.truncate(listing.limit as usize);
    let next_cursor = if more {
        rows.last().map(|last| {
            let p = &last.product;
            match listing.sort {
                Sort::Relevance => Cursor::Relevance { rank: last.rank.unwrap_or_default(), id: p.id },
                Sort::Newest => Cursor::Newest { created_at: p.created_at, id: p.id },
                Sort::PriceAsc | Sort::PriceDesc => Cursor::Price { price: Decimal::from(p.price), id: p.id },
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Page { items: rows.into_iter().map(|r| r.product.into()).collect(), next_cursor })
}
