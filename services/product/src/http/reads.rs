//! The public catalogue: listing and searching products, one product, the categories.

use axum::extract::State;
use axum::response::Response;
use common::ApiError;
use common::cache::Cached;
use common::conditional::{self, ReadHeaders};
use common::error::Problem;
use common::extract::{Path, Query};
use common::money::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Category, Cursor, Listing, Page, Product, Sort};
use crate::error::Error;
use crate::repository;

use super::bad;

/// Listing parameters, as the query string carries them; parsed into a [`Listing`].
///
/// Every field is a string to Rust, so that [`ListParams::parse`] words each error; the
/// `param` attributes say what it accepts (no parameter may hold NUL, `%00`).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Full-text search over name and description; at most 500 characters once trimmed.
    #[param(max_length = 500, pattern = r"^[^\u0000]*$")]
    q: Option<String>,
    #[param(value_type = Option<Uuid>)]
    category_id: Option<String>,
    /// Decimal amount with at most 2 places, inclusive (above `max_price`, nothing matches).
    #[param(pattern = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$", example = "10.00")]
    min_price: Option<String>,
    /// Decimal amount with at most 2 places, inclusive.
    #[param(pattern = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$", example = "99.99")]
    max_price: Option<String>,
    /// `true`: only products with stock left.
    #[param(value_type = Option<bool>)]
    in_stock: Option<String>,
    /// `relevance` (the default with `q`; without `q` nothing is more relevant than anything
    /// else, and it means `newest`), `newest` (the default without `q`), `price_asc`,
    /// `price_desc`.
    #[param(pattern = "^(relevance|newest|price_asc|price_desc)$")]
    sort: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, with the same `sort`.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

impl ListParams {
    fn parse(self) -> Result<Listing, ApiError> {
        let q = self.q.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
        if q.as_ref().is_some_and(|q| q.chars().count() > 500) {
            return Err(bad("q must be at most 500 characters"));
        }
        let category_id =
            self.category_id.map(|c| c.parse::<Uuid>().map_err(|_| bad("category_id must be a UUID"))).transpose()?;
        let price = |name: &str, raw: Option<String>| {
            raw.map(|raw| Money::parse(&raw).map(Decimal::from).map_err(|e| bad(format!("{name} {e}")))).transpose()
        };
        let min_price = price("min_price", self.min_price)?;
        let max_price = price("max_price", self.max_price)?;
        let in_stock = match self.in_stock.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(bad("in_stock must be true or false")),
        };
        let sort = match self.sort.as_deref() {
            None if q.is_some() => Sort::Relevance,
            None => Sort::Newest,
            Some("relevance") if q.is_some() => Sort::Relevance,
            Some("relevance") => Sort::Newest,
            Some("newest") => Sort::Newest,
            Some("price_asc") => Sort::PriceAsc,
            Some("price_desc") => Sort::PriceDesc,
            Some(_) => return Err(bad("sort must be relevance, newest, price_asc or price_desc")),
        };
        let limit = common::page::limit(self.limit.as_deref())?;
        let cursor = self
            .cursor
            .map(|raw| Cursor::decode(&raw, sort).ok_or_else(|| bad("the cursor is not valid for this listing")))
            .transpose()?;
        Ok(Listing { q, category_id, min_price, max_price, in_stock, sort, limit, cursor })
    }
}

/// List products: search, filter, sort, page.
///
/// Catalogue reads carry an `ETag`; `If-None-Match` with it is answered `304`. Anonymous
/// reads carry `Cache-Control: public, max-age=5` (a CDN or the gateway may keep them),
/// authenticated ones `private, no-cache`. Another replica's write shows within
/// `CACHE_STALE_MAX` (1 s by default); this replica's own writes show at once.
#[utoipa::path(
    get, path = "/api/products", tag = "products",
    params(ListParams),
    responses(
        (status = 200, description = "A page of products, with its `ETag`", body = Page<Product>),
        (status = 304, description = "Not modified: `If-None-Match` names the page's current `ETag`"),
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn list_products(
    State(state): State<AppState>,
    headers: ReadHeaders,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let listing = params.parse()?;
    let page = state.catalog.page(&listing).await?;
    Ok(conditional::respond(&headers, &page))
}

/// One product.
///
/// Catalogue reads carry an `ETag`; `If-None-Match` with it is answered `304`. Anonymous
/// reads carry `Cache-Control: public, max-age=5` (a CDN or the gateway may keep them),
/// authenticated ones `private, no-cache`. Another replica's write shows within
/// `CACHE_STALE_MAX` (1 s by default); this replica's own writes show at once.
#[utoipa::path(
    get, path = "/api/products/{id}", tag = "products",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The product, with its `ETag`", body = Product),
        (status = 304, description = "Not modified: `If-None-Match` names the product's current `ETag`"),
        (status = 404, description = "No such product (or deleted)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn get_product(
    State(state): State<AppState>,
    headers: ReadHeaders,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let product = state.catalog.product(id).await?.ok_or(Error::NotFound)?;
    Ok(conditional::respond(&headers, &product))
}

/// Every category.
#[derive(Serialize, ToSchema)]
pub struct Categories {
    items: Vec<Category>,
}

/// List categories.
///
/// Catalogue reads carry an `ETag`; `If-None-Match` with it is answered `304`. Anonymous
/// reads carry `Cache-Control: public, max-age=5` (a CDN or the gateway may keep them),
/// authenticated ones `private, no-cache`. Another replica's write shows within
/// `CACHE_STALE_MAX` (1 s by default); this replica's own writes show at once.
#[utoipa::path(
    get, path = "/api/categories", tag = "categories",
    responses(
        (status = 200, description = "Every category, with their `ETag`", body = Categories),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`"),
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn list_categories(State(state): State<AppState>, headers: ReadHeaders) -> Result<Response, ApiError> {
    let categories = Categories { items: repository::categories(&state.db).await? };
    let json = serde_json::to_vec(&categories).map_err(ApiError::internal)?;
    Ok(conditional::respond(&headers, &Cached::new(json.into())))
}
