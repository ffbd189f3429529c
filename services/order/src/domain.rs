//! The rules of orders and carts, with no SQL and no HTTP: the status machine, valid
//! quantities and addresses, totals in decimal arithmetic, and list cursors.

use chrono::{DateTime, Utc};
use common::money::{CURRENCY, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lists are paged the one way every service pages them.
pub use common::page::Page;

/// The status machine is the contract's (`common::contracts`): the payment service reads
/// the same statuses, and each move names the event that announces it.
pub use common::contracts::{IllegalTransition, OrderAction as Action, OrderStatus};

/// Units of one product in a cart or an order line: 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(i32);

impl Quantity {
    pub const MAX: i64 = 100;

    pub fn parse(raw: i64) -> Result<Self, &'static str> {
        if (1..=Self::MAX).contains(&raw) { Ok(Self(raw as i32)) } else { Err("must be between 1 and 100") }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// The most products one cart or order holds.
pub const MAX_LINES: usize = 50;

/// One product and how many of it, as a checkout asks the product service to reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// The lines of a checkout, each product once (repeated products are added up).
pub fn merge_lines(lines: impl IntoIterator<Item = Line>) -> Vec<Line> {
    let mut merged: Vec<Line> = Vec::new();
    for line in lines {
        match merged.iter_mut().find(|l| l.product_id == line.product_id) {
            Some(existing) => existing.quantity += line.quantity,
            None => merged.push(line),
        }
    }
    merged
}

/// Where an order goes. Parsed from the request, so every stored address is valid.
///
/// The schema says what [`ShippingAddress::parse`] accepts: no control characters
/// (`char::is_control`: U+0000–U+001F, U+007F–U+009F), where `parse` refuses them only
/// between the first and last visible characters; and, in a required field, a character
/// that is not white space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"
}))]
pub struct ShippingAddress {
    #[schema(schema_with = required_text::<100>)]
    pub name: String,
    #[schema(schema_with = required_text::<200>)]
    pub line1: String,
    /// At most 200 characters; a blank one is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub line2: Option<String>,
    #[schema(schema_with = required_text::<100>)]
    pub city: String,
    #[schema(schema_with = required_text::<20>)]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2; the schema lists `COUNTRIES` (`country_schema`).
    #[schema(schema_with = country_schema)]
    pub country: String,
}

/// A required field of 1 to `MAX` characters: what [`text`] takes, once trimmed, as the
/// schema says it (`schema_with` replaces the field's doc comment, hence the description).
fn required_text<const MAX: usize>() -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX))
        .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"))
        .description(Some(format!("1–{MAX} characters, not blank.")))
}

/// `country`: an enum of [`COUNTRIES`], so that the document lists exactly the codes
/// `parse` takes (`schema_with` replaces the field's doc comment, hence the description).
fn country_schema() -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(COUNTRIES.split(' ')))
        .description(Some("ISO 3166-1 alpha-2, upper case (lower case is taken too, and stored upper case)."))
        .examples([serde_json::json!("GB")])
}

/// ISO 3166-1 alpha-2, every officially assigned code.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR \
BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ \
FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE \
JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR \
MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU \
RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// A trimmed text of `min..=max` characters with no control characters.
fn text(raw: &str, min: usize, max: usize) -> Result<String, String> {
    let value = raw.trim();
    let length = value.chars().count();
    if length < min || length > max {
        return Err(if min > 0 {
            format!("must be {min} to {max} characters")
        } else {
            format!("must be at most {max} characters")
        });
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_owned())
}

impl ShippingAddress {
    /// The address with every field checked; the errors name their fields (under
    /// `shipping_address.`).
    pub fn parse(raw: ShippingAddress) -> Result<Self, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let mut field = |name: &'static str, result: Result<String, String>| match result {
            Ok(value) => value,
            Err(message) => {
                errors.push((name, message));
                String::new()
            }
        };
        let name = field("shipping_address.name", text(&raw.name, 1, 100));
        let line1 = field("shipping_address.line1", text(&raw.line1, 1, 200));
        let line2 = raw.line2.as_deref().map(|l| field("shipping_address.line2", text(l, 0, 200)));
        let city = field("shipping_address.city", text(&raw.city, 1, 100));
        let postal_code = field("shipping_address.postal_code", text(&raw.postal_code, 1, 20));
        let country = raw.country.trim().to_ascii_uppercase();
        let is_code = country.len() == 2 && COUNTRIES.split(' ').any(|c| c == country);
        if !is_code {
            errors.push(("shipping_address.country", "must be an ISO 3166-1 alpha-2 code such as \"US\"".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self { name, line1, line2: line2.filter(|l| !l.is_empty()), city, postal_code, country })
    }
}

/// One line of a cart or an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub name: String,
    pub unit_price: Money,
    pub quantity: i32,
    /// `unit_price × quantity`.
    pub line_total: Money,
}

/// A total too large for an amount (`NUMERIC(12,2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the total is larger than the largest amount, 9999999999.99")]
pub struct TotalTooLarge;

impl OrderLine {
    pub fn new(product_id: Uuid, name: String, unit_price: Money, quantity: i32) -> Result<Self, TotalTooLarge> {
        let line_total = Money::new(unit_price.amount() * Decimal::from(quantity)).map_err(|_| TotalTooLarge)?;
        Ok(Self { product_id, name, unit_price, quantity, line_total })
    }
}

/// The sum of the lines, in decimal arithmetic.
pub fn total(lines: &[OrderLine]) -> Result<Money, TotalTooLarge> {
    let sum: Decimal = lines.iter().map(|l| l.line_total.amount()).sum();
    Money::new(sum).map_err(|_| TotalTooLarge)
}

/// A user's cart, with the product service's current names and prices.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Cart {
    pub items: Vec<OrderLine>,
    pub total: Money,
    #[schema(example = "USD")]
    pub currency: &'static str,
}

impl Cart {
    pub fn new(items: Vec<OrderLine>) -> Result<Self, TotalTooLarge> {
        Ok(Self { total: total(&items)?, items, currency: CURRENCY })
    }
}

/// An order as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub total: Money,
    #[schema(example = "USD")]
    pub currency: String,
    pub shipping_address: ShippingAddress,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What its payment has refunded so far.
    pub refunded_total: Money,
    /// While the order awaits payment: when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the WebSocket pushes on every status change (API.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChanged {
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub at: DateTime<Utc>,
}

impl StatusChanged {
    pub fn new(order_id: Uuid, status: OrderStatus, at: DateTime<Utc>) -> Self {
        Self { kind: "order.status_changed".into(), order_id, status, at }
    }

    pub fn of(order: &Order) -> Self {
        Self::new(order.id, order.status, order.updated_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_one_to_a_hundred() {
        assert!(Quantity::parse(0).is_err());
        assert_eq!(Quantity::parse(1).unwrap().get(), 1);
        assert_eq!(Quantity::parse(100).unwrap().get(), 100);
        assert!(Quantity::parse(101).is_err());
        assert!(Quantity::parse(i64::MIN).is_err());
    }

    #[test]
    fn totals_are_exact_decimals() {
        let price = Money::parse("0.10").unwrap();
        let lines = vec![
            OrderLine::new(Uuid::now_v7(), "a".into(), price, 3).unwrap(),
            OrderLine::new(Uuid::now_v7(), "b".into(), Money::parse("19.99").unwrap(), 2).unwrap(),
        ];
        assert_eq!(lines[0].line_total.to_string(), "0.30");
        assert_eq!(total(&lines).unwrap().to_string(), "40.28");
        let huge = Money::parse("9999999999.99").unwrap();
        assert_eq!(OrderLine::new(Uuid::now_v7(), "c".into(), huge, 2), Err(TotalTooLarge));
    }

    #[test]
    fn repeated_products_are_added_up() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let merged = merge_lines([
            Line { product_id: a, quantity: 1 },
            Line { product_id: b, quantity: 2 },
            Line { product_id: a, quantity: 3 },
        ]);
        assert_eq!(merged, vec![Line { product_id: a, quantity: 4 }, Line { product_id: b, quantity: 2 }]);
    }

    fn address(country: &str) -> ShippingAddress {
        ShippingAddress {
            name: " Ada ".into(),
            line1: "1 Main St".into(),
            line2: Some("".into()),
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country: country.into(),
        }
    }

    #[test]
    fn addresses_need_every_field_and_a_real_country() {
        let parsed = ShippingAddress::parse(address("us")).unwrap();
        assert_eq!((parsed.name.as_str(), parsed.country.as_str(), parsed.line2), ("Ada", "US", None));
        assert_eq!(COUNTRIES.split(' ').count(), 249);
        let errors = ShippingAddress::parse(address("XX")).unwrap_err();
        assert_eq!(errors.iter().map(|(f, _)| *f).collect::<Vec<_>>(), ["shipping_address.country"]);
        let mut empty = address("USA");
        empty.name = " ".into();
        empty.city = "x".repeat(101);
        empty.line1 = "a\u{0}b".into();
        let fields: Vec<_> = ShippingAddress::parse(empty).unwrap_err().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["shipping_address.name", "shipping_address.line1", "shipping_address.city", "shipping_address.country"]
        );
    }
}
