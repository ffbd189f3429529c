//! Integer fields that also take a zero fraction (`36.0`).

/// For `#[serde(deserialize_with = "common::extract::integer")]`: a JSON integer, also
/// when written with a zero fraction (`36.0`), which is the same number in JSON and an
/// `integer` to JSON Schema, so generated clients may send it. `36.5` stays refused.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};

    struct Integer;
    impl Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // Below 2^53 every integral float is exact.
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(Integer)
}

/// [`integer`] for an optional field (`#[serde(default, deserialize_with = …)]`).
pub fn optional_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Integer(#[serde(deserialize_with = "integer")] i64);
    Ok(<Option<Integer> as serde::Deserialize>::deserialize(deserializer)?.map(|Integer(v)| v))
}
