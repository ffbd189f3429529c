//! Cache-aside for the hot reads: a product by id (with short-lived entries for unknown
//! ids) and listing pages.
//!
//! Every write puts the fresh product in the cache after its transaction commits (never
//! over a later state of it) and bumps the listing generation: a listing page counts only
//! in the generation it was cached in, which is read with it, so pages cached before the
//! write are never served again. So a read after a write always
//! sees the write, by id and in listings. With the cache away, reads go to the database.

use std::time::Duration;

use axum::body::Bytes;
use common::cache::Cache;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Listing, Page, Product};
use crate::error::Error;
use crate::repository;

const PRODUCT_TTL: Duration = Duration::from_secs(120);
/// How long an unknown id is remembered as unknown.
const MISSING_TTL: Duration = Duration::from_secs(15);
const PAGE_TTL: Duration = Duration::from_secs(30);
/// Bumped after every product write: the listing pages cached before it count no more.
const LISTING_GENERATION: &str = "products:listing-generation";

fn product_key(id: Uuid) -> String {
    format!("product:{id}")
}

fn product_ttl(product: &Option<Product>) -> Duration {
    if product.is_some() { PRODUCT_TTL } else { MISSING_TTL }
}

/// The product service's view of the shared cache.
#[derive(Clone, Debug)]
pub struct CatalogCache {
    cache: Cache,
    db: PgPool,
}

impl CatalogCache {
    pub fn new(cache: Cache, db: PgPool) -> Self {
        Self { cache, db }
    }

    /// A live product's JSON, through the cache: sent on as the cache holds it.
    pub async fn product_json(&self, id: Uuid) -> Result<Option<Bytes>, Error> {
        let db = self.db.clone();
        let json =
            self.cache
                .load_json(&product_key(id), product_ttl, move || async move {
                    Ok(repository::find_product(&db, id).await?)
                })
                .await
                .map_err(Error::Cache)?;
        // An unknown id is cached too, as `null`.
        Ok((json.as_ref() != b"null").then_some(json))
    }

    /// A listing page's JSON, through the cache: valid while no product was written since
    /// it was cached (straight from the database when the cache cannot say).
    pub async fn page_json(&self, listing: &Listing) -> Result<Bytes, Error> {
        let digest = Sha256::digest(listing.cache_key().as_bytes());
        let key = format!("products:page:{}", hex(&digest));
        let (db, listing) = (self.db.clone(), listing.clone());
        self.cache
            .load_json_in_generation(
                &key,
                LISTING_GENERATION,
                |_: &Page<Product>| PAGE_TTL,
                move || async move { Ok(repository::list(&db, &listing).await?) },
            )
            .await
            .map_err(Error::Cache)
    }

    /// After a committed write: the fresh product replaces the cached one (or, deleted,
    /// becomes unknown) unless the cache already holds a later state of it, and every
    /// listing page is retired. The version is the row's `updated_at`, which the database
    /// sets when the row is written, so a later commit always has the later version.
    pub async fn written(&self, product: &Product, deleted: bool) {
        let key = product_key(product.id);
        self.cache.forget_flight(&key);
        let value = (!deleted).then(|| product.clone());
        self.cache.put_versioned(&key, product.updated_at.timestamp_micros(), &value, product_ttl(&value)).await;
        self.cache.bump(LISTING_GENERATION).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
