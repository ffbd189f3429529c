//! The catalogue's admin endpoints: products created, changed, deleted and restocked
//! (through [`crate::steps::catalog`]), and categories created.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::auth::AdminUser;
use common::error::Problem;
use common::extract::{Json, Parse, Path};
use common::money::{Money, PositiveMoney};
use common::{ApiError, FieldErrors};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{
    Category, CategoryName, Description, MAX_STOCK, NewProduct, Price, Product, ProductChanges, ProductName, Sku,
    Stock, parse_currency,
};
use crate::repository;
use crate::steps::catalog;

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

impl Parse for CreateProduct {
    type Output = NewProduct;

    /// The product to create, or every field that breaks a rule.
    fn parse(self) -> Result<Self::Output, ApiError> {
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
pub(super) async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateProduct>,
) -> Result<impl IntoResponse, ApiError> {
    let product = catalog::create(&state, &req.parse()?).await?;
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

impl Parse for UpdateProduct {
    type Output = ProductChanges;

    /// The changes asked for, or every field that breaks a rule.
    fn parse(self) -> Result<Self::Output, ApiError> {
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

/// Change any fields of a product (admins).
#[utoipa::path(
    patch, path = "/api/products/{id}", tag = "products",
    params(("id" = Uuid, Path)),
    request_body = UpdateProduct,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Updated; emits `product.updated`", body = Product),
        (status = 409, description = "`conflict`: the SKU is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateProduct>,
) -> Result<Json<Product>, ApiError> {
    Ok(Json(catalog::update(&state, id, &req.parse()?).await?))
}

/// Delete a product (admins): it leaves listings and can no longer be ordered.
#[utoipa::path(
    delete, path = "/api/products/{id}", tag = "products",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted; emits `product.updated` with `deleted: true`"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn delete_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    catalog::delete(&state, id).await?;
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

impl Parse for StockDelta {
    type Output = i32;

    fn parse(self) -> Result<Self::Output, ApiError> {
        if self.delta == 0 || self.delta.unsigned_abs() > MAX_STOCK as u64 {
            return Err(ApiError::invalid_field("delta", "must be a non-zero number from -1000000000 to 1000000000"));
        }
        Ok(self.delta as i32)
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
        (status = 409, description = "`insufficient_stock`: it would go below zero", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A zero or out-of-range delta", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(req): Json<StockDelta>,
) -> Result<Json<Product>, ApiError> {
    Ok(Json(catalog::adjust_stock(&state, id, req.parse()?).await?))
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

impl Parse for CreateCategory {
    type Output = (CategoryName, Option<Uuid>);

    fn parse(self) -> Result<Self::Output, ApiError> {
        let name = CategoryName::parse(self.name).map_err(|e| ApiError::invalid_field("name", e))?;
        Ok((name, self.parent_id))
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
pub(super) async fn create_category(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateCategory>,
) -> Result<impl IntoResponse, ApiError> {
    let (name, parent_id) = req.parse()?;
    let category = repository::insert_category(&state.db, &name, parent_id).await?;
    Ok((StatusCode::CREATED, Json(category)))
}
