//! The handlers of `/api/products/*`, `/api/categories/*`, `/internal/reservations` and
//! `/internal/products`:
//! parse the request into domain types, apply the rules, map the outcome.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::auth::{AdminUser, ServiceCaller};
use common::cache::Cached;
use common::conditional;
use common::error::Problem;
use common::extract::{Body, Json, Path, Query, rule_errors_of};
use common::money::{Money, PositiveMoney};
use common::{ApiError, FieldErrors};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::cache::Change;
use crate::domain::{
    Category, CategoryName, Cursor, Description, Listing, MAX_STOCK, NewProduct, Page, Price, Product, ProductChanges,
    ProductName, ReservationStatus, Sku, Sort, Stock, parse_currency, reservation_lines,
};
use crate::error::Error;
use crate::repository::{self, ReservedItem};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, delete_product))
        .routes(routes!(adjust_stock))
        .routes(routes!(list_categories, create_category))
        .routes(routes!(reserve))
        .routes(routes!(lookup_products))
}

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

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(detail)
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
        (status = 400, description = "A malformed parameter or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
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
async fn get_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let product = state.catalog.product(id).await?.ok_or(Error::NotFound)?;
    Ok(conditional::respond(&headers, &product))
}

// What `ProductName`, `Description`, `Sku`, `Price`, `Stock` and `parse_currency` accept
// (domain.rs). No string may hold NUL (`\u0000`), which the JSON extractor refuses; "not
// blank" is a character that is neither NUL nor white space (`\s`, and U+0085, which Rust
// trims and ECMA-262's `\s` leaves out).

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// 1–200 characters, not blank.
    #[schema(
        example = "Oak desk",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    name: String,
    /// At most 5000 characters; empty when absent.
    #[schema(max_length = 5000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
    /// More than 0.
    #[schema(value_type = PositiveMoney)]
    price: Money,
    /// `USD`, the only currency sold in (the default).
    #[schema(example = "USD", pattern = "^USD$")]
    currency: Option<String>,
    /// 0 to 1000000000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "common::extract::integer")]
    stock: i64,
    category_id: Uuid,
    /// 1–64 characters of letters, digits, `_`, `.` and `-`; unique. Generated when absent.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    sku: Option<String>,
}

impl CreateProduct {
    /// The product to create, or every field that breaks a rule.
    fn parse(self) -> Result<NewProduct, ApiError> {
        let mut errors = FieldErrors::default();
        let name = errors.check("name", ProductName::parse(self.name));
        let description = errors.check("description", Description::parse(self.description.unwrap_or_default()));
        let price = errors.check("price", Price::parse(self.price));
        let stock = errors.check("stock", Stock::parse(self.stock));
        // `None`: an invalid SKU; `Some(None)`: none given, one is generated.
        let sku = match self.sku {
            Some(raw) => errors.check("sku", Sku::parse(raw)).map(Some),
            None => Some(None),
        };
        if let Some(currency) = &self.currency {
            errors.check("currency", parse_currency(currency));
        }
        let (Some(name), Some(description), Some(price), Some(stock), Some(sku)) =
            (name, description, price, stock, sku)
        else {
            return Err(ApiError::validation(errors));
        };
        errors.into_result()?;
        Ok(NewProduct { sku, name, description, price, stock, category_id: self.category_id })
    }
}

impl Body for CreateProduct {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// Create a product (admins).
#[utoipa::path(
    post, path = "/api/products", tag = "products",
    request_body = CreateProduct,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Created; emits `product.created`", body = Product),
        (status = 409, description = "`conflict`: the SKU is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (an unknown `category_id` included)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateProduct>,
) -> Result<impl IntoResponse, ApiError> {
    let new = req.parse()?;
    let mut tx = state.db.begin().await?;
    let product = repository::insert_product(&mut tx, &new).await?;
    tx.commit().await?;
    state.catalog.written(&[(product.clone(), Change::Listed)]).await;
    Ok((StatusCode::CREATED, Json(product)))
}

/// Any fields of [`CreateProduct`], with the same rules; those left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    /// 1–200 characters, not blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$")]
    name: Option<String>,
    /// At most 5000 characters.
    #[schema(max_length = 5000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
    /// More than 0.
    #[schema(value_type = Option<PositiveMoney>)]
    price: Option<Money>,
    /// `USD`, the only currency sold in.
    #[schema(pattern = "^USD$")]
    currency: Option<String>,
    /// 0 to 1000000000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "common::extract::optional_integer")]
    stock: Option<i64>,
    category_id: Option<Uuid>,
    /// 1–64 characters of letters, digits, `_`, `.` and `-`; unique.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    sku: Option<String>,
}

impl UpdateProduct {
    /// The changes asked for, or every field that breaks a rule.
    fn parse(self) -> Result<ProductChanges, ApiError> {
        let mut errors = FieldErrors::default();
        let changes = ProductChanges {
            name: self.name.and_then(|n| errors.check("name", ProductName::parse(n))),
            description: self.description.and_then(|d| errors.check("description", Description::parse(d))),
            price: self.price.and_then(|p| errors.check("price", Price::parse(p))),
            stock: self.stock.and_then(|s| errors.check("stock", Stock::parse(s))),
            sku: self.sku.and_then(|s| errors.check("sku", Sku::parse(s))),
            category_id: self.category_id,
        };
        if let Some(currency) = &self.currency {
            errors.check("currency", parse_currency(currency));
        }
        errors.into_result()?;
        Ok(changes)
    }
}

impl Body for UpdateProduct {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// Change any fields of a product (admins).
#[utoipa::path(
    patch, path = "/api/products/{id}", tag = "products",
    params(("id" = Uuid, Path)),
    request_body = UpdateProduct,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Updated; emits `product.updated`", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the SKU is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateProduct>,
) -> Result<Json<Product>, ApiError> {
    let changes = req.parse()?;
    let mut tx = state.db.begin().await?;
    let product = repository::update_product(&mut tx, id, &changes).await?;
    tx.commit().await?;
    state.catalog.written(&[(product.clone(), Change::Listed)]).await;
    Ok(Json(product))
}

/// Delete a product (admins): it leaves listings and can no longer be ordered.
#[utoipa::path(
    delete, path = "/api/products/{id}", tag = "products",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted; emits `product.updated` with `deleted: true`"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn delete_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.db.begin().await?;
    let product = repository::soft_delete(&mut tx, id).await?;
    tx.commit().await?;
    state.catalog.written(&[(product, Change::Deleted)]).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockDelta {
    /// Units to add (or, negative, to take away); not zero.
    #[schema(schema_with = delta_schema)]
    #[serde(deserialize_with = "common::extract::integer")]
    delta: i64,
}

impl StockDelta {
    fn parse(self) -> Result<i32, ApiError> {
        if self.delta == 0 || self.delta.unsigned_abs() > MAX_STOCK as u64 {
            return Err(ApiError::invalid_field("delta", "must be a non-zero number from -1000000000 to 1000000000"));
        }
        Ok(self.delta as i32)
    }
}

impl Body for StockDelta {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// `delta`: from -1000000000 to 1000000000 but not zero, which takes two ranges to say
/// (`schema_with` replaces the field's doc comment, hence the description here).
fn delta_schema() -> utoipa::openapi::OneOfBuilder {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let range = |min: i64, max: i64| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(min))
            .maximum(Some(max))
    };
    OneOfBuilder::new()
        .item(range(1, MAX_STOCK))
        .item(range(-MAX_STOCK, -1))
        .description(Some("Units to add (or, negative, to take away): not zero, at most 1000000000 either way."))
}

/// Add or remove stock (admins); never below zero.
#[utoipa::path(
    post, path = "/api/products/{id}/stock", tag = "products",
    params(("id" = Uuid, Path)),
    request_body = StockDelta,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The product with its new stock; emits `product.stock_changed`", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient_stock`: it would go below zero", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A zero or out-of-range delta", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<StockDelta>,
) -> Result<Json<Product>, ApiError> {
    let delta = req.parse()?;
    let mut tx = state.db.begin().await?;
    let product = repository::adjust_stock(&mut tx, id, delta).await?;
    tx.commit().await?;
    state.catalog.written(&[(product.clone(), Change::Stock(delta.into()))]).await;
    Ok(Json(product))
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
async fn list_categories(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let categories = Categories { items: repository::categories(&state.db).await? };
    let json = serde_json::to_vec(&categories).map_err(ApiError::internal)?;
    Ok(conditional::respond(&headers, &Cached::new(json.into())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    /// 1–100 characters, not blank; unique among its siblings.
    #[schema(
        example = "Furniture",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    name: String,
    /// An existing category.
    parent_id: Option<Uuid>,
}

impl CreateCategory {
    fn parse(self) -> Result<(CategoryName, Option<Uuid>), ApiError> {
        let name = CategoryName::parse(self.name).map_err(|e| ApiError::invalid_field("name", e))?;
        Ok((name, self.parent_id))
    }
}

impl Body for CreateCategory {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
}

/// Create a category (admins).
#[utoipa::path(
    post, path = "/api/categories", tag = "categories",
    request_body = CreateCategory,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Created", body = Category),
        (status = 409, description = "`conflict`: a sibling has this name", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (an unknown `parent_id` included)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn create_category(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateCategory>,
) -> Result<impl IntoResponse, ApiError> {
    let (name, parent_id) = req.parse()?;
    let category = repository::insert_category(&state.db, &name, parent_id).await?;
    Ok((StatusCode::CREATED, Json(category)))
}

/// The most products one lookup names: more than a cart's most lines (50) with the one
/// being added.
const LOOKUP_MAX: usize = 100;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// 1 to 100 product ids, comma-separated.
    ids: String,
}

/// The answer of a lookup (what `lookup_products` writes out of the cached JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LookupResponse {
    items: Vec<Option<Product>>,
}

/// Products by id, as carts show them, in one call (service to service with a service
/// token; not routed by the gateway).
#[utoipa::path(
    get, path = "/internal/products", tag = "internal",
    params(LookupParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each id's product, in the order asked, or `null` where the catalogue has no such product (or it was deleted)", body = LookupResponse),
        (status = 400, description = "`ids` is not 1 to 100 comma-separated ids", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn lookup_products(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
    Query(params): Query<LookupParams>,
) -> Result<Response, ApiError> {
    let ids: Vec<Uuid> = params
        .ids
        .split(',')
        .map(|id| id.trim().parse())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|ids: &Vec<Uuid>| (1..=LOOKUP_MAX).contains(&ids.len()))
        .ok_or_else(|| ApiError::bad_request("ids must be 1 to 100 comma-separated product ids"))?;
    let json = crate::cache::lookup_json(&state.catalog.products(&ids).await?);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The order the stock is held for; a retry with the same id reserves nothing more.
    order_id: Uuid,
    /// At least one line; lines of the same product are added up.
    #[schema(min_items = 1)]
    items: Vec<ReserveItem>,
}

impl Body for ReserveRequest {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveItem {
    product_id: Uuid,
    /// 1 to 10000.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "common::extract::integer")]
    quantity: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ReservationResponse {
    order_id: Uuid,
    status: ReservationStatus,
    items: Vec<ReservedItem>,
}

/// Reserve stock for an order: every item or none (service to service with a service
/// token; not routed by the gateway).
#[utoipa::path(
    post, path = "/internal/reservations", tag = "internal",
    request_body = ReserveRequest,
    security(("bearer" = [])),
    responses(
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
        (status = 201, description = "Reserved, with each item's current unit price", body = ReservationResponse),
        (status = 200, description = "This order's reservation already existed: returned as it is", body = ReservationResponse),
        (status = 409, description = "`insufficient_stock` naming the product (nothing reserved), or `conflict`: the order's reservation was released", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid lines, or a product that can't be ordered", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(order_id = %req.order_id))]
async fn reserve(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    Json(req): Json<ReserveRequest>,
) -> Result<impl IntoResponse, ApiError> {
    tracing::debug!(caller = %caller.sub, "reservation requested");
    let requested: Vec<(Uuid, i64)> = req.items.iter().map(|i| (i.product_id, i.quantity)).collect();
    let lines = reservation_lines(&requested).map_err(|bad_lines| {
        let mut errors = FieldErrors::default();
        for (index, message) in bad_lines {
            let field = if index == usize::MAX { "items".to_owned() } else { format!("items[{index}].quantity") };
            errors.add(field, message);
        }
        ApiError::validation(errors)
    })?;
    let first_line = |product_id: Uuid| requested.iter().position(|(p, _)| *p == product_id).unwrap_or_default();
    // Reservations lock products in one order, but a consumer restocking several
    // cancelled orders in one transaction may not: PostgreSQL then ends one side, and a
    // reservation it ended is run again (nothing of it was kept).
    let mut attempt = 1;
    let (reservation, changed) = loop {
        let mut tx = state.db.begin().await?;
        match repository::reserve(&mut tx, req.order_id, &lines, first_line).await {
            Err(Error::Database(err)) if common::db::is_deadlock(&err) && attempt < 3 => attempt += 1,
            reserved => {
                let reserved = reserved?;
                tx.commit().await?;
                break reserved;
            }
        }
    };
    // Each product lost the units reserved of it: only one that ran out leaves listings.
    let taken = |product: &Product| -> i64 {
        -lines.iter().filter(|l| l.product_id == product.id).map(|l| i64::from(l.quantity)).sum::<i64>()
    };
    let changed: Vec<(Product, Change)> = changed
        .into_iter()
        .map(|product| {
            let change = Change::Stock(taken(&product));
            (product, change)
        })
        .collect();
    state.catalog.written(&changed).await;
    let status = if reservation.created { StatusCode::CREATED } else { StatusCode::OK };
    let body = ReservationResponse { order_id: req.order_id, status: reservation.status, items: reservation.items };
    Ok((status, Json(body)))
}
