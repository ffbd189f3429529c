//! Money on the wire: a JSON string holding a decimal with at most two places (`"19.99"`),
//! never a float, in the one currency the platform sells in.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The currency of every amount.
pub const CURRENCY: &str = "USD";

/// The largest amount `NUMERIC(12,2)` holds.
fn max_amount() -> Decimal {
    Decimal::new(999_999_999_999, 2)
}

/// A non-negative amount with at most two decimal places, within `NUMERIC(12,2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.trim();
        if trimmed != raw || trimmed.is_empty() || trimmed.contains(['e', 'E', '+']) {
            return Err("must be a decimal amount such as \"19.99\"");
        }
        let value: Decimal = trimmed.parse().map_err(|_| "must be a decimal amount such as \"19.99\"")?;
        Self::new(value)
    }

    pub fn new(value: Decimal) -> Result<Self, &'static str> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err("must not be negative");
        }
        if value.normalize().scale() > 2 {
            return Err("must have at most 2 decimal places");
        }
        if value > max_amount() {
            return Err("is too large");
        }
        Ok(Self(value.round_dp(2)))
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

impl From<Money> for Decimal {
    fn from(money: Money) -> Decimal {
        money.0
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only strings: a float would already have lost the cents it claims to carry.
        let raw = String::deserialize(deserializer)?;
        Money::parse(&raw).map_err(serde::de::Error::custom)
    }
}

// The patterns spell digits `[0-9]`, not `\d`: Python's `re`, which test generators such as
// schemathesis use, lets `\d` match every Unicode digit, and `Money::parse` takes only ASCII.
// Neither allows leading zeros or a third decimal place ("1.500"), which `parse` would take:
// the document describes what clients should send, and everything it allows parses.

/// A money string's schema: `pattern`, and what it allows in words.
fn amount_schema(pattern: &str, allows: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some(pattern))
        .description(Some(format!("A decimal amount with at most 2 places, as a string, {allows}")))
        .examples([serde_json::json!("19.99")])
        .into()
}

impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        amount_schema(r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$", "at most 9999999999.99")
    }
}

impl utoipa::ToSchema for Money {}

/// The schema of a [`Money`] field that refuses zero (a price, a payment, a refund), for
/// `#[schema(value_type = PositiveMoney)]`. Only a schema: such fields are `Money` in Rust,
/// and the code that reads them refuses zero.
pub enum PositiveMoney {}

impl utoipa::PartialSchema for PositiveMoney {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        amount_schema(r"^([1-9][0-9]{0,9}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$", "from 0.01 to 9999999999.99")
    }
}

impl utoipa::ToSchema for PositiveMoney {}

impl sqlx::Type<sqlx::Postgres> for Money {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Decimal as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for Money {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <Decimal as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Money {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let decimal = <Decimal as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
        Money::new(decimal).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_with_at_most_two_places_and_print_with_two() {
        assert_eq!(Money::parse("19.99").unwrap().to_string(), "19.99");
        assert_eq!(Money::parse("5").unwrap().to_string(), "5.00");
        assert_eq!(Money::parse("5.10").unwrap().to_string(), "5.10");
        assert_eq!(Money::parse("0").unwrap(), Money::ZERO);
        assert_eq!(Money::parse("9999999999.99").unwrap().to_string(), "9999999999.99");
        for bad in ["", " 1", "1.999", "-1", "abc", "1e3", "10000000000.00", "NaN", "+1"] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_json_strings_are_money() {
        assert_eq!(serde_json::from_str::<Money>("\"2.50\"").unwrap().to_string(), "2.50");
        assert!(serde_json::from_str::<Money>("2.5").is_err());
        assert_eq!(serde_json::to_string(&Money::parse("2.5").unwrap()).unwrap(), "\"2.50\"");
    }
}
