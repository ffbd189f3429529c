//! The catalogue's hot reads through both cache levels (`common::cache`): a product by
//! id (with short-lived entries for unknown ids) and listing pages.
//!
//! A listing page is cached as the ids it holds and its next cursor; its products come
//! from the product entries, all of a page's in one multi-get. So a change to one product
//! (its stock, say) refreshes that product wherever it is listed without retiring any
//! page. What decides membership or order (a product created, deleted, renamed,
//! repriced, moved, or its stock reaching or leaving zero) bumps the listing generation:
//! a page counts only in the generation it was cached in, which is read with it, and
//! every replica's first level drops its pages.
//!
//! Every write puts the fresh product in Redis after its transaction commits (never over
//! a later state of it), then invalidates it in this process's first level and, through
//! Redis, in every other replica's. So this replica reads its writes at once and the
//! others within `CACHE_STALE_MAX`. With the cache away, reads go to the database.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use common::cache::{Cache, Cached, Footprint, Ticket, etag_of};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Listing, Product};
use crate::error::Error;
use crate::repository;

const PRODUCT_TTL: Duration = Duration::from_secs(120);
/// How long an unknown id is remembered as unknown.
const MISSING_TTL: Duration = Duration::from_secs(15);
const PAGE_TTL: Duration = Duration::from_secs(30);
/// Bumped after every write that may change which products a page lists, or their order.
const LISTING_GENERATION: &str = "products:listing-generation";
/// The first level's family of listing pages, invalidated with each such bump.
const PAGES: &str = "products:pages";

fn product_key(id: Uuid) -> String {
    format!("product:{id}")
}

fn product_ttl(product: &Option<Product>) -> Duration {
    if product.is_some() { PRODUCT_TTL } else { MISSING_TTL }
}

/// What a listing page caches: the ids it holds, in order, and the cursor after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PageIds {
    ids: Vec<Uuid>,
    next_cursor: Option<String>,
}

/// A listing page in the first level (one of storefront size: [`keeps_assembled`]): its ids
/// and the page as assembled from its products, with the tickets taken before they were
/// read, so that it is served again, without one lookup per product, until one of them is
/// invalidated. Filled once assembled, so that the level's bound counts the page it keeps
/// (twenty products' JSON), not only its ids.
#[derive(Debug)]
struct ListedPage {
    ids: PageIds,
    assembled: Assembled,
}

/// A page as assembled, with the tickets of its products taken before they were read.
type Assembled = (Vec<Ticket>, PageJson);

impl Footprint for ListedPage {
    fn footprint(&self) -> usize {
        let ids = self.ids.ids.len() * size_of::<Uuid>() + self.ids.next_cursor.as_ref().map_or(0, String::len);
        let (tickets, page) = &self.assembled;
        size_of::<Self>() + ids + tickets.len() * size_of::<Ticket>() + page.footprint()
    }
}

/// Whether the first level keeps a listing's page as assembled: pages of the size a
/// storefront lists ([`common::page::DEFAULT_LIMIT`]) or smaller. Larger ones are what a
/// client syncing or exporting the catalogue asks for, each page once: kept, a hundred
/// products' page weighs as much as the hundred products, and a walk through the whole
/// catalogue (100k products, 1,000 such pages) would push the products themselves out of
/// the level. Such a page takes its ids from Redis and its products from the level each
/// time instead.
fn keeps_assembled(listing: &Listing) -> bool {
    listing.limit <= common::page::DEFAULT_LIMIT
}

/// What a write did to a product, as far as listings care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Anything that may move it in or out of a listing, or within one.
    Listed,
    /// It is gone from the catalogue.
    Deleted,
    /// Only its stock, by this many units (negative: taken), which matters to listings
    /// only when it reaches or leaves zero (`in_stock=true`).
    Stock(i64),
}

impl Change {
    fn relists(self, product: &Product) -> bool {
        match self {
            Self::Listed | Self::Deleted => true,
            Self::Stock(delta) => {
                let after = i64::from(product.stock);
                after == 0 || after - delta <= 0
            }
        }
    }
}

/// A listing page, encoded, with its tag.
pub type PageJson = Cached;

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

    /// A live product's JSON and tag, through the cache.
    pub async fn product(&self, id: Uuid) -> Result<Option<Arc<Cached>>, Error> {
        let db = self.db.clone();
        let cached =
            self.cache
                .load_cached(&product_key(id), product_ttl, move || async move {
                    Ok(repository::find_product(&db, id).await?)
                })
                .await
                .map_err(Error::Cache)?;
        // An unknown id is cached too, as `null`.
        Ok((!cached.is_null()).then_some(cached))
    }

    /// Several products by id, through the cache in one multi-get: each one's JSON and
    /// tag, `None` for an id the catalogue does not have (or deleted).
    pub async fn products(&self, ids: &[Uuid]) -> Result<Vec<Option<Arc<Cached>>>, Error> {
        let keys: Vec<String> = ids.iter().map(|id| product_key(*id)).collect();
        let cached = self.load_products(&keys, ids).await?;
        Ok(cached.into_iter().map(|c| (!c.is_null()).then_some(c)).collect())
    }

    /// The products of `ids` (their cache `keys`) in one multi-get, those neither level
    /// holds in one query; an unknown or deleted one is cached (and answered) as `null`.
    async fn load_products(&self, keys: &[String], ids: &[Uuid]) -> Result<Vec<Arc<Cached>>, Error> {
        let (db, ids) = (self.db.clone(), ids.to_vec());
        self.cache
            .load_cached_many(keys, product_ttl, move |missing| async move {
                let missing: Vec<Uuid> = missing.iter().map(|i| ids[*i]).collect();
                Ok(repository::find_products(&db, &missing).await?)
            })
            .await
            .map_err(Error::Cache)
    }

    /// A listing page: its ids through the cache (straight from the database when the
    /// cache cannot say which generation is current), then its products in one
    /// multi-get. A product deleted since the page was cached is left out.
    pub async fn page(&self, listing: &Listing) -> Result<PageJson, Error> {
        let listing_key = listing.cache_key();
        // A page the first level keeps is looked for there, under the listing itself
        // (Redis gets a digest of it, made only when this level misses); one it never
        // keeps is not looked for either.
        let first_level = keeps_assembled(listing).then(|| {
            let key = format!("products:page:{listing_key}@{}", self.cache.l1_family(PAGES));
            // Taken before the level is read: the fill below is voided by an invalidation
            // of the page since.
            let ticket = self.cache.l1_ticket(&key);
            (key, ticket)
        });
        let listed = first_level.as_ref().and_then(|(key, _)| self.cache.l1_get::<ListedPage>(key));
        if let Some(ListedPage { assembled: (tickets, assembled), .. }) = listed.as_deref()
            && self.cache.l1_tickets_hold(tickets)
        {
            return Ok(assembled.clone());
        }
        // Boxed: an assembled page's future, inside the listing handler's, stays this small
        // instead of the size of the round trips below (see `Cache::load_cached`).
        Box::pin(self.assemble_page(listing, &listing_key, first_level, listed)).await
    }

    /// [`CatalogCache::page`] past a first-level miss: the page's ids (the first level's,
    /// or the cache's below, or the database's), then its products, kept assembled when
    /// the first level keeps this page.
    async fn assemble_page(
        &self,
        listing: &Listing,
        listing_key: &str,
        first_level: Option<(String, Option<Ticket>)>,
        listed: Option<Arc<ListedPage>>,
    ) -> Result<PageJson, Error> {
        let ids = match listed {
            Some(page) => page.ids.clone(),
            None => {
                let key = format!("products:page:{}", hex(&Sha256::digest(listing_key.as_bytes())));
                let (db, listing) = (self.db.clone(), listing.clone());
                let json = self
                    .cache
                    .load_json_in_generation(
                        &key,
                        LISTING_GENERATION,
                        |_: &PageIds| PAGE_TTL,
                        move || async move {
                            let page = repository::list(&db, &listing).await?;
                            Ok(PageIds {
                                ids: page.items.iter().map(|p| p.id).collect(),
                                next_cursor: page.next_cursor,
                            })
                        },
                    )
                    .await
                    .map_err(Error::Cache)?;
                serde_json::from_slice::<PageIds>(&json).map_err(|e| Error::Internal(e.into()))?
            }
        };
        let keys: Vec<String> = ids.ids.iter().map(|id| product_key(*id)).collect();
        let tickets = first_level.as_ref().and_then(|_| self.cache.l1_tickets(&keys));
        let products = self.load_products(&keys, &ids.ids).await?;
        let assembled = assemble(&products, ids.next_cursor.as_deref());
        // Kept with the page it makes, once, so that the level's bound counts both.
        if let (Some((key, ticket)), Some(tickets)) = (first_level, tickets) {
            let listed = ListedPage { ids, assembled: (tickets, assembled.clone()) };
            self.cache.l1_fill(&key, Arc::new(listed), ticket);
        }
        Ok(assembled)
    }

    /// After a committed write of `products` (each with what the write did to it): each
    /// fresh product replaces the cached one (or, deleted, becomes unknown) unless the
    /// cache already holds a later state of it; the listing generation is bumped if the
    /// change may move any of them in a listing; then both levels are told. The version
    /// is the row's `updated_at`, which the database sets when the row is written, so a
    /// later commit always has the later version.
    pub async fn written(&self, products: &[(Product, Change)]) {
        let keys: Vec<String> = products.iter().map(|(product, _)| product_key(product.id)).collect();
        for key in &keys {
            self.cache.forget_flight(key);
        }
        // Side by side: the cache connection pipelines them.
        futures::future::join_all(products.iter().zip(&keys).map(|((product, change), key)| {
            let value = (*change != Change::Deleted).then(|| product.clone());
            let ttl = product_ttl(&value);
            async move { self.cache.put_versioned(key, product.updated_at.timestamp_micros(), &value, ttl).await }
        }))
        .await;
        let relists = products.iter().any(|(product, change)| change.relists(product));
        if relists {
            self.cache.bump(LISTING_GENERATION).await;
        }
        self.cache.invalidate(&keys, if relists { &[PAGES] } else { &[] }).await;
    }
}

/// A page's JSON, as `Page<Product>` serializes: `{"items":[…],"next_cursor":…}`, from
/// the products' cached JSON; its tag is made of theirs.
fn assemble(products: &[Arc<Cached>], next_cursor: Option<&str>) -> PageJson {
    let live: Vec<&Arc<Cached>> = products.iter().filter(|p| !p.is_null()).collect();
    let cursor = serde_json::to_string(&next_cursor).unwrap_or_else(|_| "null".to_owned());
    let mut json = Vec::with_capacity(live.iter().map(|p| p.json.len() + 1).sum::<usize>() + cursor.len() + 32);
    push_items(&mut json, live.iter().map(|p| &p.json[..]));
    json.extend_from_slice(b",\"next_cursor\":");
    json.extend_from_slice(cursor.as_bytes());
    json.push(b'}');
    let mut parts: Vec<&[u8]> = live.iter().map(|p| p.etag.as_bytes()).collect();
    parts.push(cursor.as_bytes());
    let etag = etag_of(&parts);
    Cached::tagged(Bytes::from(json), etag)
}

/// A lookup's answer, `{"items":[...]}`, out of the cached JSON: `null` for a product
/// the catalogue does not have.
pub fn lookup_json(products: &[Option<Arc<Cached>>]) -> Vec<u8> {
    let mut json =
        Vec::with_capacity(products.iter().map(|p| p.as_ref().map_or(4, |p| p.json.len()) + 1).sum::<usize>() + 12);
    push_items(&mut json, products.iter().map(|p| p.as_ref().map_or(&b"null"[..], |p| &p.json[..])));
    json.push(b'}');
    json
}

/// Writes `{"items":[` and the JSON values, comma-separated, and `]`.
fn push_items<'a>(json: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>) {
    json.extend_from_slice(b"{\"items\":[");
    for (n, item) in items.enumerate() {
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(item);
    }
    json.push(b']');
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_page_weighs_the_page_it_keeps() {
        let ids = PageIds { ids: vec![Uuid::now_v7(); 100], next_cursor: None };
        let empty = (Vec::new(), Cached::new(Bytes::from_static(b"{}")));
        let bare = ListedPage { ids: ids.clone(), assembled: empty }.footprint();
        assert!(bare >= 1600, "its ids: {bare}");
        let page = Cached::new(Bytes::from(vec![b' '; 40_000]));
        let kept = ListedPage { ids, assembled: (Vec::new(), page) }.footprint();
        assert!(kept >= bare + 40_000, "the page it keeps counts: {kept}");
    }

    fn product(stock: i32) -> Product {
        let now = chrono::Utc::now();
        Product {
            id: Uuid::now_v7(),
            sku: "SKU-1".into(),
            name: "Desk".into(),
            description: String::new(),
            price: common::money::Money::parse("1.00").unwrap(),
            currency: "USD".into(),
            stock,
            category_id: Uuid::now_v7(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn only_pages_of_a_storefront_size_are_kept_assembled() {
        let listing = |limit| Listing {
            q: None,
            category_id: None,
            min_price: None,
            max_price: None,
            in_stock: false,
            sort: crate::domain::Sort::Newest,
            limit,
            cursor: None,
        };
        assert!(keeps_assembled(&listing(common::page::DEFAULT_LIMIT)));
        assert!(keeps_assembled(&listing(1)));
        assert!(!keeps_assembled(&listing(100)), "a bulk client's page, read once");
    }

    #[test]
    fn only_stock_reaching_or_leaving_zero_relists() {
        assert!(!Change::Stock(-1).relists(&product(4)), "5 → 4");
        assert!(Change::Stock(-2).relists(&product(0)), "2 → 0");
        assert!(Change::Stock(3).relists(&product(3)), "0 → 3");
        assert!(!Change::Stock(3).relists(&product(4)), "1 → 4");
        assert!(Change::Listed.relists(&product(4)));
    }

    #[test]
    fn an_assembled_page_is_what_serde_makes_of_it() {
        let (a, b) = (product(1), product(2));
        let cached = |p: &Product| Arc::new(Cached::new(serde_json::to_vec(p).unwrap().into()));
        let null = Arc::new(Cached::new(Bytes::from_static(b"null")));
        let page = assemble(&[cached(&a), null, cached(&b)], Some("c1"));
        let expected = crate::domain::Page { items: vec![a.clone(), b.clone()], next_cursor: Some("c1".to_owned()) };
        assert_eq!(page.json, serde_json::to_vec(&expected).unwrap(), "a deleted product is left out");
        let last = assemble(&[cached(&a)], None);
        let expected = crate::domain::Page { items: vec![a.clone()], next_cursor: None };
        assert_eq!(last.json, serde_json::to_vec(&expected).unwrap());
        assert_ne!(page.etag, last.etag);
        assert_eq!(assemble(&[cached(&a)], None).etag, last.etag, "the same page, the same tag");
    }
}
