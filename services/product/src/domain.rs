//! The catalogue's rules, free of SQL and HTTP: valid names, SKUs, prices and stock; how
//! listings sort and page; what a reservation is.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use common::money::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lists are paged the one way every service pages them.
pub use common::page::Page;

/// The most units one product may have in stock, or one delta may move.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Text of 1 to `MAX` characters, not blank: a product's or a category's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonBlank<const MAX: usize>(String);

impl<const MAX: usize> NonBlank<MAX> {
    pub fn parse(raw: String) -> Result<Self, String> {
        let chars = raw.chars().count();
        if (1..=MAX).contains(&chars) && !raw.trim().is_empty() {
            Ok(Self(raw))
        } else {
            Err(format!("must be 1 to {MAX} characters"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product's name: 1–200 characters, not blank.
pub type ProductName = NonBlank<200>;

/// At most 5000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        if raw.chars().count() <= 5000 { Ok(Self(raw)) } else { Err("must be at most 5000 characters") }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if (1..=64).contains(&raw.len()) && raw.chars().all(allowed) {
            Ok(Self(raw))
        } else {
            Err("must be 1 to 64 characters of letters, digits, '_', '.' or '-'")
        }
    }

    /// A SKU for a product created without one.
    pub fn generate(id: Uuid) -> Self {
        Self(format!("SKU-{}", &id.simple().to_string()[20..]).to_uppercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A price: more than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(Money);

impl Price {
    pub fn parse(money: Money) -> Result<Self, &'static str> {
        if money.is_zero() { Err("must be greater than 0") } else { Ok(Self(money)) }
    }

    pub fn amount(self) -> Decimal {
        self.0.amount()
    }
}

/// Units in stock: 0 to [`MAX_STOCK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock(i32);

impl Stock {
    pub fn parse(raw: i64) -> Result<Self, &'static str> {
        if (0..=MAX_STOCK).contains(&raw) { Ok(Self(raw as i32)) } else { Err("must be between 0 and 1000000000") }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// The only currency sold in.
pub fn parse_currency(raw: &str) -> Result<(), &'static str> {
    if raw == common::money::CURRENCY { Ok(()) } else { Err("must be USD, the only currency sold in") }
}

/// A product that passed every rule, to be created.
#[derive(Debug)]
pub struct NewProduct {
    pub sku: Option<Sku>,
    pub name: ProductName,
    pub description: Description,
    pub price: Price,
    pub stock: Stock,
    pub category_id: Uuid,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProductChanges {
    pub sku: Option<Sku>,
    pub name: Option<ProductName>,
    pub description: Option<Description>,
    pub price: Option<Price>,
    pub stock: Option<Stock>,
    pub category_id: Option<Uuid>,
}

/// A product as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price: Money,
    #[schema(example = "USD")]
    pub currency: String,
    /// Units that can still be ordered (reserved units are not counted).
    pub stock: i32,
    pub category_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A category as clients see it: a root one has no `parent_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Category {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// A category's name: 1–100 characters, not blank; unique among its siblings.
pub type CategoryName = NonBlank<100>;

/// How a listing is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best full-text match first (the default with `q`).
    Relevance,
    /// Most recently created first (the default without `q`).
    Newest,
    PriceAsc,
    PriceDesc,
}

/// Where the previous page stopped, in the listing's own order. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cursor {
    Relevance { rank: f32, id: Uuid },
    Newest { created_at: DateTime<Utc>, id: Uuid },
    Price { price: Decimal, id: Uuid },
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The cursor, if `raw` is one this listing's sort can continue from.
    pub fn decode(raw: &str, sort: Sort) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let cursor: Cursor = serde_json::from_slice(&bytes).ok()?;
        // A cursor is only ever one of ours, but it comes back from the client: values a
        // column cannot hold would fail in the database instead of here.
        let in_range = match &cursor {
            Cursor::Relevance { rank, .. } => rank.is_finite(),
            Cursor::Newest { created_at, .. } => (1970..=9999).contains(&chrono::Datelike::year(created_at)),
            Cursor::Price { price, .. } => Money::new(*price).is_ok(),
        };
        let fits = in_range
            && matches!(
                (&cursor, sort),
                (Cursor::Relevance { .. }, Sort::Relevance)
                    | (Cursor::Newest { .. }, Sort::Newest)
                    | (Cursor::Price { .. }, Sort::PriceAsc | Sort::PriceDesc)
            );
        fits.then_some(cursor)
    }
}

/// A listing request that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The full-text query, if any (never blank).
    pub q: Option<String>,
    pub category_id: Option<Uuid>,
    pub min_price: Option<Decimal>,
    pub max_price: Option<Decimal>,
    pub in_stock: bool,
    pub sort: Sort,
    pub limit: i64,
    pub cursor: Option<Cursor>,
}

impl Listing {
    /// A stable text naming this exact page, for the cache key: each field in a form
    /// without `|`, and the free text last, so that no two listings share one. (Written
    /// field by field: `Debug` formatting made it 8% of a cached page's instructions.)
    pub fn cache_key(&self) -> String {
        use std::fmt::Write as _;
        let mut key = String::with_capacity(128);
        // Writing to a `String` cannot fail.
        if let Some(category) = self.category_id {
            let _ = write!(key, "{category}");
        }
        key.push('|');
        for price in [self.min_price, self.max_price] {
            if let Some(price) = price {
                let _ = write!(key, "{price}");
            }
            key.push('|');
        }
        let _ = write!(key, "{}|{:?}|{}|", self.in_stock, self.sort, self.limit);
        if let Some(cursor) = &self.cursor {
            key.push_str(&cursor.encode());
        }
        key.push('|');
        key.push_str(self.q.as_deref().unwrap_or_default());
        key
    }
}

/// One line of a reservation request, after merging repeated products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// The state of the stock held for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ReservationStatus {
    Reserved,
    Committed,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a reservation when its order moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationEvent {
    /// The order was paid: the units are sold.
    Paid,
    /// The order was cancelled or expired: the units go back on sale, sold or not.
    Ended,
}

impl ReservationStatus {
    /// The status after `event`, or `None` when the event changes nothing (a redelivery,
    /// or an order that was already released).
    pub fn after(self, event: ReservationEvent) -> Option<Self> {
        match (self, event) {
            (Self::Reserved, ReservationEvent::Paid) => Some(Self::Committed),
            (Self::Reserved | Self::Committed, ReservationEvent::Ended) => Some(Self::Released),
            _ => None,
        }
    }
}

/// Merges repeated products and checks quantities, naming bad lines by their index.
pub fn reservation_lines(items: &[(Uuid, i64)]) -> Result<Vec<ReservationLine>, Vec<(usize, &'static str)>> {
    let mut errors = Vec::new();
    let mut lines: Vec<ReservationLine> = Vec::new();
    if items.is_empty() {
        errors.push((usize::MAX, "must contain at least one item"));
    }
    for (index, (product_id, quantity)) in items.iter().enumerate() {
        if !(1..=10_000).contains(quantity) {
            errors.push((index, "must be between 1 and 10000"));
            continue;
        }
        match lines.iter_mut().find(|l| l.product_id == *product_id) {
            Some(line) => line.quantity += *quantity as i32,
            None => lines.push(ReservationLine { product_id: *product_id, quantity: *quantity as i32 }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // A fixed order of row locks, so two reservations of the same products cannot deadlock.
    lines.sort_by_key(|l| l.product_id);
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_skus_prices_and_stock() {
        assert!(ProductName::parse("A".into()).is_ok());
        assert!(ProductName::parse("   ".into()).is_err());
        assert!(ProductName::parse("x".repeat(201)).is_err());
        assert!(Sku::parse("ABC-123_x.y".into()).is_ok());
        assert!(Sku::parse("has space".into()).is_err());
        assert!(Price::parse(Money::parse("0.01").unwrap()).is_ok());
        assert!(Price::parse(Money::ZERO).is_err());
        assert!(Stock::parse(0).is_ok());
        assert!(Stock::parse(-1).is_err());
        assert!(Stock::parse(MAX_STOCK + 1).is_err());
        assert!(parse_currency("USD").is_ok());
        assert!(parse_currency("EUR").is_err());
        assert_eq!(Sku::generate(Uuid::nil()).as_str(), "SKU-000000000000");
    }

    #[test]
    fn listings_that_differ_have_different_cache_keys() {
        let base = Listing {
            q: None,
            category_id: None,
            min_price: None,
            max_price: None,
            in_stock: false,
            sort: Sort::Newest,
            limit: 20,
            cursor: None,
        };
        let listings = [
            base.clone(),
            Listing { q: Some("desk".into()), ..base.clone() },
            // Free text holding the separator cannot pass for other fields.
            Listing { q: Some("a|b".into()), ..base.clone() },
            Listing { q: Some("b".into()), ..base.clone() },
            Listing { min_price: Some(Decimal::new(1000, 2)), ..base.clone() },
            Listing { max_price: Some(Decimal::new(1000, 2)), ..base.clone() },
            Listing { category_id: Some(Uuid::nil()), ..base.clone() },
            Listing { in_stock: true, ..base.clone() },
            Listing { sort: Sort::PriceAsc, ..base.clone() },
            Listing { limit: 21, ..base.clone() },
        ];
        let keys: std::collections::HashSet<String> = listings.iter().map(Listing::cache_key).collect();
        assert_eq!(keys.len(), listings.len(), "{keys:?}");
        assert_eq!(base.cache_key(), base.clone().cache_key(), "stable");
    }

    #[test]
    fn cursors_round_trip_and_only_fit_their_sort() {
        let cursor = Cursor::Price { price: Decimal::new(1999, 2), id: Uuid::now_v7() };
        let raw = cursor.encode();
        assert_eq!(Cursor::decode(&raw, Sort::PriceAsc), Some(cursor.clone()));
        assert_eq!(Cursor::decode(&raw, Sort::PriceDesc), Some(cursor));
        assert_eq!(Cursor::decode(&raw, Sort::Newest), None);
        assert_eq!(Cursor::decode("garbage!", Sort::Newest), None);
        assert_eq!(Cursor::decode("", Sort::Newest), None);
        let ancient =
            r#"{"Newest":{"created_at":"-10000-01-01T00:00:00Z","id":"00000000-0000-0000-0000-000000000000"}}"#;
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(ancient), Sort::Newest), None);
        let huge = r#"{"Price":{"price":"1e20","id":"00000000-0000-0000-0000-000000000000"}}"#;
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(huge), Sort::PriceAsc), None);
    }

    #[test]
    fn reservation_lines_merge_and_sort_and_name_bad_lines() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let lines = reservation_lines(&[(b, 1), (a, 2), (b, 3)]).unwrap();
        assert_eq!(
            lines,
            [ReservationLine { product_id: a, quantity: 2 }, ReservationLine { product_id: b, quantity: 4 }]
        );
        assert_eq!(reservation_lines(&[(a, 1), (b, 0)]).unwrap_err(), [(1, "must be between 1 and 10000")]);
        assert!(reservation_lines(&[]).is_err());
    }

    #[test]
    fn reservation_transitions() {
        use ReservationEvent::*;
        use ReservationStatus::*;
        assert_eq!(Reserved.after(Paid), Some(Committed));
        assert_eq!(Reserved.after(Ended), Some(Released));
        assert_eq!(Committed.after(Ended), Some(Released));
        assert_eq!(Committed.after(Paid), None);
        assert_eq!(Released.after(Paid), None);
        assert_eq!(Released.after(Ended), None);
    }
}
